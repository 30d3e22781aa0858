// The output lock of automatic segmentation: one holder at a time (O_EXCL file with pid, host and
// start time), a lock of a process that is gone (same host) taken over, another host's never broken,
// and a cancelled run of this process waited for. Real files and real processes for the pids.
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { SpatialSamError } from "#src/errors.ts";
import { lockOutput, type LockOwner } from "#server/engine/auto/output_lock.ts";

const dir = mkdtempSync(join(tmpdir(), "output-lock-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** The pid of a process that has exited (and been reaped). */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], { encoding: "utf8" });
  return Number(r.stdout);
}

const writeLock = (path: string, o: Partial<LockOwner>) =>
  writeFileSync(path, JSON.stringify({ pid: 1, host: hostname(), startedAt: "2026-01-01T00:00:00.000Z", token: "t", ...o }));

async function refusal(p: Promise<unknown>): Promise<SpatialSamError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(SpatialSamError);
  return e as SpatialSamError;
}

describe("lockOutput", () => {
  it("holds one writer at a time and records who holds it; release frees it", async () => {
    const path = join(dir, "a.lock");
    const release = await lockOutput(path, "precomputed://out", "out");
    const owner = JSON.parse(readFileSync(path, "utf8")) as LockOwner;
    expect(owner.pid).toBe(process.pid);
    expect(owner.host).toBe(hostname());
    expect(Number.isNaN(Date.parse(owner.startedAt))).toBe(false);
    const e = await refusal(lockOutput(path, "precomputed://out", "out", undefined, 50));
    expect(e._tag).toBe("FailedPrecondition");
    expect(e.field).toBe("out");
    expect(e.message).toContain(`pid ${process.pid} on ${hostname()}`);
    await release();
    expect(existsSync(path)).toBe(false);
    await (await lockOutput(path, "precomputed://out", "out"))();
  });

  it("takes over the lock of a process that is gone on this host, never one that runs or one of another host", async () => {
    const path = join(dir, "b.lock");
    const gone = deadPid();
    writeLock(path, { pid: gone });
    const release = await lockOutput(path, "x", "output_url");
    expect((JSON.parse(readFileSync(path, "utf8")) as LockOwner).pid).toBe(process.pid);
    await release();

    const child = spawn("sleep", ["30"]);
    try {
      writeLock(path, { pid: child.pid! });
      const e = await refusal(lockOutput(path, "x", "output_url"));
      expect(e.field).toBe("output_url");
      expect(e.message).toContain(`pid ${child.pid}`);
    } finally {
      child.kill();
    }
    writeLock(path, { pid: gone, host: `not-${hostname()}` });
    const e = await refusal(lockOutput(path, "x", "output_url"));
    expect(e.message).toContain(`on not-${hostname()}`);
    expect(existsSync(path)).toBe(true);
  });

  it("a release after the lock was taken over leaves the new holder's file alone", async () => {
    const path = join(dir, "c.lock");
    const release = await lockOutput(path, "x", "out");
    writeLock(path, { pid: process.pid, token: "someone-else" });
    await release();
    expect((JSON.parse(readFileSync(path, "utf8")) as LockOwner).token).toBe("someone-else");
  });

  it("waits for a cancelled run of this process instead of failing", async () => {
    const path = join(dir, "d.lock");
    const cancelledRun = new AbortController();
    const release = await lockOutput(path, "x", "out", cancelledRun.signal);
    cancelledRun.abort();
    let got = false;
    const next = lockOutput(path, "x", "out").then((r) => ((got = true), r));
    await new Promise((r) => setTimeout(r, 50));
    expect(got).toBe(false);
    await release();
    await (await next)();
    expect(got).toBe(true);
  });

  it("gives a run of this process a moment to be cancelled: a cancel that arrives late is waited for, a run that goes on is refused", async () => {
    const path = join(dir, "e.lock");
    const run = new AbortController();
    const release = await lockOutput(path, "x", "out", run.signal);
    // The cancel arrives after the new call asked for the lock, within the grace.
    let got = false;
    const next = lockOutput(path, "x", "out", undefined, 10_000).then((r) => ((got = true), r));
    await new Promise((r) => setTimeout(r, 50));
    expect(got).toBe(false);
    run.abort();
    await new Promise((r) => setTimeout(r, 50));
    expect(got).toBe(false); // cancelled, but it still holds the lock until its model run ends
    await release();
    const releaseNext = await next;
    expect(got).toBe(true);
    // A run that is not cancelled keeps the output: the refusal comes once the grace has passed.
    let refused = false;
    const refusing = refusal(lockOutput(path, "x", "out", undefined, 300)).then((e) => ((refused = true), e));
    await new Promise((r) => setTimeout(r, 50));
    expect(refused).toBe(false);
    expect((await refusing)._tag).toBe("FailedPrecondition");
    await releaseNext();
    expect(existsSync(path)).toBe(false);
  });
});
