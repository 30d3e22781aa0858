// One writer per segmentation output: an exclusive lock file beside the output's data, created with
// O_EXCL and holding who took it (pid, host, start time), so two runs on one output cannot mix chunks.
import { randomUUID } from "node:crypto";
import { link, open, readFile, rename, unlink } from "node:fs/promises";
import { hostname } from "node:os";
import { cancelled, failedPrecondition, throwIfAborted } from "#src/errors.ts";

export interface LockOwner {
  pid: number;
  host: string;
  /** ISO time the lock was taken. */
  startedAt: string;
  /** Tells two locks of one process apart (two calls in one server). */
  token: string;
}

const errno = (e: unknown) => (e as NodeJS.ErrnoException).code;

// Locks this process holds, by path: a run that was cancelled still holds its lock until its model
// run in progress ends; a new run on the same output waits for that instead of failing.
const held = new Map<string, { token: string; signal: AbortSignal | undefined; released: Promise<void> }>();

/** Whether process `pid` exists on this machine (EPERM: it exists, owned by someone else). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return errno(e) === "EPERM";
  }
}

async function readOwner(path: string): Promise<LockOwner | undefined> {
  try {
    const o = JSON.parse(await readFile(path, "utf8")) as Partial<LockOwner>;
    return typeof o.pid === "number" && typeof o.host === "string" ? (o as LockOwner) : undefined;
  } catch {
    // Missing, or caught between create and write: treated as held (not stale) by the caller.
    return undefined;
  }
}

/**
 * Resolves when our own run `run` is cancelled or lets go of its lock, or after `ms`, whichever
 * comes first.
 */
function cancelOrRelease(run: { signal: AbortSignal | undefined; released: Promise<void> }, ms: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      run.signal?.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    run.signal?.addEventListener("abort", done, { once: true });
    void run.released.then(done);
  });
}

function abortable(p: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) return p;
  throwIfAborted(signal);
  return new Promise<void>((resolve, reject) => {
    const onAbort = () => reject(cancelled());
    signal.addEventListener("abort", onAbort, { once: true });
    void p.then(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    });
  });
}

async function create(path: string, owner: LockOwner): Promise<boolean> {
  try {
    const fh = await open(path, "wx");
    try {
      await fh.writeFile(JSON.stringify(owner));
    } finally {
      await fh.close();
    }
    return true;
  } catch (e) {
    if (errno(e) === "EEXIST") return false;
    throw e;
  }
}

/**
 * Takes the lock at `path` for `what` (the output URL) or fails with FailedPrecondition naming
 * `field`. A lock left by a process that no longer runs on this host is stale and is taken over; a
 * lock from another host is never broken (its pid means nothing here): delete it by hand if that
 * run is gone. A lock of this process whose run was cancelled (its `signal` aborted) is waited for;
 * one whose run still goes on is given `ownRunGraceMs` to be cancelled before the refusal, because a client that cancels a call and at once sends it again can be served before the server
 * has handled the cancel (it comes on the same connection, but its event fires later).
 * Returns the release function (it removes the file only while it is still ours).
 */
export async function lockOutput(
  path: string,
  what: string,
  field: string,
  signal?: AbortSignal,
  ownRunGraceMs = 3000,
): Promise<() => Promise<void>> {
  const owner: LockOwner = { pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), token: randomUUID() };
  let graceGiven = false;
  for (let attempt = 0; attempt < 3; attempt++) {
    if (await create(path, owner)) {
      let done!: () => void;
      held.set(path, { token: owner.token, signal, released: new Promise<void>((r) => (done = r)) });
      return async () => {
        const now = await readOwner(path);
        if (now?.token === owner.token) await unlink(path).catch(() => undefined);
        if (held.get(path)?.token === owner.token) held.delete(path);
        done();
      };
    }
    const other = await readOwner(path);
    const mine = other === undefined ? undefined : held.get(path);
    if (mine !== undefined && mine.token === other?.token && mine.signal?.aborted) {
      // Our own cancelled run: it lets go once its model run in progress ends.
      await abortable(mine.released, signal);
      attempt--;
      continue;
    }
    if (mine !== undefined && mine.token === other?.token && !graceGiven) {
      // Our own run, not (yet) cancelled: its cancel may be on its way. Only a cancel frees the
      // output for this call; a run that goes on (or ends meanwhile) was a concurrent one.
      graceGiven = true;
      await abortable(cancelOrRelease(mine, ownRunGraceMs), signal);
      if (mine.signal?.aborted) {
        attempt--;
        continue;
      }
    }
    if (other === undefined || other.host !== owner.host || alive(other.pid)) {
      const who = other === undefined ? "another run" : `pid ${other.pid} on ${other.host} since ${other.startedAt}`;
      throw failedPrecondition(`${what} is being written by ${who} (lock ${path}); wait for it to finish or choose another output`, field);
    }
    // Stale. Move it aside atomically (only one breaker wins the rename), then check that what we
    // moved is the stale lock and not a fresh one another breaker made meanwhile; put that back.
    const aside = `${path}.stale-${owner.token}`;
    try {
      await rename(path, aside);
    } catch (e) {
      if (errno(e) === "ENOENT") continue;
      throw e;
    }
    const moved = await readOwner(aside);
    if (moved !== undefined && moved.token !== other.token) {
      await link(aside, path).catch(() => undefined);
    }
    await unlink(aside).catch(() => undefined);
  }
  throw failedPrecondition(`${what}: could not take the lock ${path} (other runs keep taking it)`, field);
}
