// Byte stores under a root URL: local files (confined to configured roots), HTTP(S) with range
// requests, and anonymous public S3 buckets. Absence is `undefined`, never an error.

import { randomBytes } from "node:crypto";
import { constants as fsConstants } from "node:fs";
import * as fs from "node:fs/promises";
import * as path from "node:path";
import { fileURLToPath } from "node:url";
import { cancelled, failedPrecondition, invalidArgument, permissionDenied, throwIfAborted } from "#src/errors.ts";
import type { ReadOptions, Store, StoreGetOptions } from "#src/volume/types.ts";

export type GetOptions = StoreGetOptions;

function validateRange(range: [number, number] | undefined, suffixLength?: number): void {
  if (suffixLength !== undefined) {
    if (!Number.isSafeInteger(suffixLength) || suffixLength < 0) throw invalidArgument("suffixLength", `expected a non-negative integer, got ${suffixLength}`);
    if (range !== undefined) throw invalidArgument("range", "give range or suffixLength, not both");
  }
  if (range === undefined) return;
  const [a, b] = range;
  if (!Number.isSafeInteger(a) || !Number.isSafeInteger(b) || a < 0 || b < a) {
    throw invalidArgument("range", `expected 0 <= start <= end, got [${a}, ${b}]`);
  }
}

/** Splits a store key into segments, refusing absolute keys and `.`/`..` segments. */
function keySegments(key: string): string[] {
  if (key === "") return [];
  if (key.startsWith("/") || key.includes("\\") || key.includes("\0")) {
    throw permissionDenied(key, "store keys must be relative paths");
  }
  const parts = key.split("/").filter((p) => p !== "");
  if (parts.some((p) => p === "." || p === "..")) throw permissionDenied(key, "`.` and `..` are not allowed in store keys");
  return parts;
}

function isInside(child: string, root: string): boolean {
  const rel = path.relative(root, child);
  return rel === "" || (!rel.startsWith("..") && !path.isAbsolute(rel));
}

function isNotFound(e: unknown): boolean {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return code === "ENOENT" || code === "ENOTDIR";
}

/** Resolves the real path of `p`, or of its nearest existing ancestor joined with the rest. */
async function realpathOfNearest(p: string): Promise<string> {
  const rest: string[] = [];
  let cur = p;
  for (;;) {
    try {
      const real = await fs.realpath(cur);
      return rest.length === 0 ? real : path.join(real, ...rest.reverse());
    } catch (e) {
      if (!isNotFound(e)) throw e;
      const parent = path.dirname(cur);
      if (parent === cur) return p;
      rest.push(path.basename(cur));
      cur = parent;
    }
  }
}

/** A local file path from `file://...` or a plain absolute/relative path. */
export function localPathOf(url: string): string {
  if (url.startsWith("file://")) {
    try {
      return fileURLToPath(url);
    } catch (e) {
      throw invalidArgument("url", `not a valid file URL: ${url}`, e);
    }
  }
  return path.resolve(url);
}

/**
 * Files under a root directory (or a single file: key "" is the root itself). Every access is
 * checked against the real paths of `allowedRoots`, so `..` and symlinks leading out are refused.
 */
export class FileStore implements Store {
  readonly url: string;
  readonly rootPath: string;
  readonly #realRoots: string[];

  private constructor(rootPath: string, realRoots: string[]) {
    this.rootPath = rootPath;
    this.url = `file://${rootPath}`;
    this.#realRoots = realRoots;
  }

  /** Opens a store at `rootUrl` (file:// URL or path); PermissionDenied when it is outside every root. */
  static async open(rootUrl: string, allowedRoots: readonly string[]): Promise<FileStore> {
    if (allowedRoots.length === 0) throw permissionDenied(rootUrl, "no file roots are configured");
    const realRoots: string[] = [];
    for (const r of allowedRoots) {
      try {
        realRoots.push(await fs.realpath(path.resolve(r)));
      } catch (e) {
        if (!isNotFound(e)) throw e;
      }
    }
    const rootPath = localPathOf(rootUrl);
    const real = await realpathOfNearest(rootPath);
    if (!realRoots.some((r) => isInside(real, r))) {
      throw permissionDenied(rootUrl, "path is outside the configured file roots");
    }
    return new FileStore(real, realRoots);
  }

  /** The real path of `key`, checked to be inside an allowed root (resolving symlinks). */
  async resolve(key: string): Promise<string> {
    const p = path.join(this.rootPath, ...keySegments(key));
    const real = await realpathOfNearest(p);
    if (!this.#realRoots.some((r) => isInside(real, r))) {
      throw permissionDenied(key, "resolves outside the configured file roots");
    }
    return real;
  }

  async get(key: string, options: GetOptions = {}): Promise<Uint8Array | undefined> {
    throwIfAborted(options.signal);
    validateRange(options.range, options.suffixLength);
    const p = await this.resolve(key);
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(p, fsConstants.O_RDONLY);
    } catch (e) {
      if (isNotFound(e) || (e as NodeJS.ErrnoException).code === "EISDIR") return undefined;
      throw e;
    }
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) return undefined;
      const [start, end] =
        options.suffixLength !== undefined ? [Math.max(0, stat.size - options.suffixLength), stat.size] : (options.range ?? [0, stat.size]);
      const from = Math.min(start, stat.size);
      const length = Math.min(end, stat.size) - from;
      const out = new Uint8Array(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await handle.read(out, done, length - done, from + done);
        if (bytesRead === 0) break;
        done += bytesRead;
      }
      throwIfAborted(options.signal);
      return done === length ? out : out.subarray(0, done);
    } finally {
      await handle.close();
    }
  }

  /** Full keys (relative to the store root) of the entries directly under `prefix`, sorted. */
  async list(prefix: string, options: ReadOptions = {}): Promise<string[]> {
    throwIfAborted(options.signal);
    const segs = keySegments(prefix);
    const dir = await this.resolve(prefix);
    let names: string[];
    try {
      names = await fs.readdir(dir);
    } catch (e) {
      if (isNotFound(e)) return [];
      throw e;
    }
    const base = segs.join("/");
    return names.sort().map((n) => (base === "" ? n : `${base}/${n}`));
  }

  /** Atomic write: a temp file in the same folder, fsync, then rename over the target. */
  async put(key: string, bytes: Uint8Array): Promise<void> {
    const segs = keySegments(key);
    if (segs.length === 0) throw invalidArgument("key", "cannot write the store root");
    const target = await this.resolve(key);
    const dir = path.dirname(target);
    await fs.mkdir(dir, { recursive: true });
    // mkdir may have walked through a symlink created meanwhile: check the real folder again.
    const realDir = await fs.realpath(dir);
    if (!this.#realRoots.some((r) => isInside(realDir, r))) throw permissionDenied(key, "resolves outside the configured file roots");
    const tmp = path.join(realDir, `.${path.basename(target)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
    const handle = await fs.open(tmp, "wx");
    try {
      await handle.writeFile(bytes);
      await handle.sync();
    } catch (e) {
      await handle.close();
      await fs.rm(tmp, { force: true });
      throw e;
    }
    await handle.close();
    try {
      await fs.rename(tmp, path.join(realDir, path.basename(target)));
    } catch (e) {
      await fs.rm(tmp, { force: true });
      throw e;
    }
  }
}

async function fetchChecked(url: string, init: RequestInit, signal: AbortSignal | undefined): Promise<Response | undefined> {
  let res: Response;
  try {
    res = await fetch(url, { ...init, signal: signal ?? null });
  } catch (e) {
    if (signal?.aborted) throw cancelled();
    throw failedPrecondition(`request failed: ${(e as Error).message}`, url);
  }
  if (res.status === 404) {
    await res.body?.cancel();
    return undefined;
  }
  return res;
}

async function readBody(res: Response, url: string, options: GetOptions, signal: AbortSignal | undefined): Promise<Uint8Array> {
  if (res.status === 416) {
    await res.body?.cancel();
    return new Uint8Array(0);
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw failedPrecondition(`HTTP ${res.status} ${res.statusText}`, url);
  }
  let bytes: Uint8Array;
  try {
    bytes = new Uint8Array(await res.arrayBuffer());
  } catch (e) {
    if (signal?.aborted) throw cancelled();
    throw failedPrecondition(`reading the response failed: ${(e as Error).message}`, url);
  }
  // A server that ignores Range answers 200 with the whole object.
  if (res.status === 200 && options.suffixLength !== undefined) return bytes.subarray(Math.max(0, bytes.length - options.suffixLength));
  const range = options.range;
  if (range !== undefined && res.status === 200) return bytes.subarray(Math.min(range[0], bytes.length), Math.min(range[1], bytes.length));
  return bytes;
}

function rangeHeader(options: GetOptions): Record<string, string> {
  if (options.suffixLength !== undefined) return { Range: `bytes=-${options.suffixLength}` };
  const range = options.range;
  return range === undefined || range[1] === range[0] ? {} : { Range: `bytes=${range[0]}-${range[1] - 1}` };
}

function joinUrl(base: string, key: string): string {
  keySegments(key);
  if (key === "") return base;
  return `${base.replace(/\/+$/, "")}/${key.split("/").map(encodeURIComponent).join("/")}`;
}

/** Objects under an http(s) URL; `range` becomes a Range header. Read-only, cannot list. */
export class HttpStore implements Store {
  readonly url: string;
  constructor(url: string) {
    if (!/^https?:\/\//.test(url)) throw invalidArgument("url", `not an http(s) URL: ${url}`);
    this.url = url;
  }

  async get(key: string, options: GetOptions = {}): Promise<Uint8Array | undefined> {
    throwIfAborted(options.signal);
    validateRange(options.range, options.suffixLength);
    if ((options.range !== undefined && options.range[0] === options.range[1]) || options.suffixLength === 0) return new Uint8Array(0);
    const url = joinUrl(this.url, key);
    const res = await fetchChecked(url, { headers: rangeHeader(options) }, options.signal);
    if (res === undefined) return undefined;
    return readBody(res, url, options, options.signal);
  }
}

function xmlUnescape(s: string): string {
  return s
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&quot;/g, '"')
    .replace(/&apos;/g, "'")
    .replace(/&#(\d+);/g, (_, d: string) => String.fromCodePoint(Number(d)))
    .replace(/&amp;/g, "&");
}

/**
 * Objects of an anonymous public S3 bucket under `s3://bucket/prefix`. Reads go to
 * https://bucket.s3.amazonaws.com/key, or to `endpoint/bucket/key` (path style) when an endpoint is
 * configured (option or SPATIAL_SAM_S3_ENDPOINT), which is how tests point it at a local server.
 */
export class S3Store implements Store {
  readonly url: string;
  readonly bucket: string;
  readonly prefix: string;
  readonly #base: string;

  constructor(url: string, options: { endpoint?: string } = {}) {
    const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(url);
    if (m === null) throw invalidArgument("url", `not an s3://bucket/prefix URL: ${url}`);
    this.url = url;
    this.bucket = m[1]!;
    this.prefix = (m[2] ?? "").replace(/\/+$/, "");
    const endpoint = options.endpoint ?? process.env.SPATIAL_SAM_S3_ENDPOINT;
    this.#base = endpoint !== undefined && endpoint !== "" ? `${endpoint.replace(/\/+$/, "")}/${this.bucket}` : `https://${this.bucket}.s3.amazonaws.com`;
  }

  #objectKey(key: string): string {
    const segs = keySegments(key);
    return [...(this.prefix === "" ? [] : [this.prefix]), ...segs].join("/");
  }

  async get(key: string, options: GetOptions = {}): Promise<Uint8Array | undefined> {
    throwIfAborted(options.signal);
    validateRange(options.range, options.suffixLength);
    if ((options.range !== undefined && options.range[0] === options.range[1]) || options.suffixLength === 0) return new Uint8Array(0);
    const url = joinUrl(this.#base, this.#objectKey(key));
    const res = await fetchChecked(url, { headers: rangeHeader(options) }, options.signal);
    // Anonymous reads of a missing key in a public bucket without list permission answer 403.
    if (res === undefined || res.status === 403) {
      await res?.body?.cancel();
      return undefined;
    }
    return readBody(res, url, options, options.signal);
  }

  /** Keys (relative to the store prefix) directly under `prefix`, via ListObjectsV2 with delimiter "/". */
  async list(prefix: string, options: ReadOptions = {}): Promise<string[]> {
    const full = this.#objectKey(prefix);
    const listPrefix = full === "" ? "" : `${full}/`;
    const strip = this.prefix === "" ? 0 : this.prefix.length + 1;
    const out = new Set<string>();
    let token: string | undefined;
    for (;;) {
      throwIfAborted(options.signal);
      const q = new URLSearchParams({ "list-type": "2", prefix: listPrefix, delimiter: "/" });
      if (token !== undefined) q.set("continuation-token", token);
      const url = `${this.#base}/?${q.toString()}`;
      const res = await fetchChecked(url, {}, options.signal);
      if (res === undefined) return [];
      const xml = new TextDecoder().decode(await readBody(res, url, {}, options.signal));
      for (const m of xml.matchAll(/<Contents>[\s\S]*?<Key>([\s\S]*?)<\/Key>[\s\S]*?<\/Contents>/g)) out.add(xmlUnescape(m[1]!));
      for (const m of xml.matchAll(/<CommonPrefixes>[\s\S]*?<Prefix>([\s\S]*?)<\/Prefix>[\s\S]*?<\/CommonPrefixes>/g)) {
        out.add(xmlUnescape(m[1]!).replace(/\/+$/, ""));
      }
      const truncated = /<IsTruncated>true<\/IsTruncated>/.test(xml);
      const next = /<NextContinuationToken>([\s\S]*?)<\/NextContinuationToken>/.exec(xml);
      if (!truncated || next === null) break;
      token = xmlUnescape(next[1]!);
    }
    return [...out].map((k) => k.slice(strip)).sort();
  }
}

export interface OpenStoreOptions {
  /** Local folders file access is confined to. */
  roots: readonly string[];
  /** S3 endpoint override (else SPATIAL_SAM_S3_ENDPOINT, else AWS). */
  s3Endpoint?: string;
}

/**
 * Opens the store for `url`: file:// or a path, http(s)://, or s3://bucket/prefix. A `?query` on
 * the URL is a volume option for the format driver (e.g. `?voxel_size_nm=`), not part of the
 * store's location, so it is dropped here.
 */
export async function openStore(url: string, options: OpenStoreOptions): Promise<Store> {
  if (typeof url !== "string" || url === "") throw invalidArgument("url", "expected a non-empty URL");
  const q = url.indexOf("?");
  if (q >= 0) url = url.slice(0, q);
  if (url.startsWith("http://") || url.startsWith("https://")) return new HttpStore(url);
  if (url.startsWith("s3://")) return new S3Store(url, options.s3Endpoint === undefined ? {} : { endpoint: options.s3Endpoint });
  if (url.startsWith("file://") || !/^[a-z][a-z0-9+.-]*:\/\//i.test(url)) return FileStore.open(url, options.roots);
  throw invalidArgument("url", `unsupported store scheme in ${url} (expected file://, http(s):// or s3://)`);
}

