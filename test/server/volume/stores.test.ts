// FileStore confinement (`..`, absolute keys, symlinks out of a root), ranges, listing and atomic
// writes; HttpStore and S3Store against a real local server (Range, 404, ListObjectsV2 paging).

import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { FileStore, HttpStore, openStore, S3Store } from "#server/volume/stores.ts";
import { startObjectServer } from "#test/helpers/object_server.ts";
import type { ObjectServer } from "#test/helpers/object_server.ts";

let base: string;
let root: string;
let outside: string;
let server: ObjectServer;
const bytes = Uint8Array.from({ length: 300 }, (_, i) => i % 251);

beforeAll(async () => {
  base = mkdtempSync(path.join(tmpdir(), "stores-"));
  root = path.join(base, "root");
  outside = path.join(base, "outside");
  mkdirSync(path.join(root, "vol/sub"), { recursive: true });
  mkdirSync(outside);
  writeFileSync(path.join(root, "vol/a.bin"), bytes);
  writeFileSync(path.join(root, "vol/sub/b.bin"), "b");
  writeFileSync(path.join(root, "vol/weird & <name>.txt"), "w");
  writeFileSync(path.join(outside, "secret.txt"), "secret");
  symlinkSync(path.join(outside, "secret.txt"), path.join(root, "vol/link-out"));
  symlinkSync(outside, path.join(root, "vol/dir-out"));
  symlinkSync(path.join(root, "vol/a.bin"), path.join(root, "vol/link-in"));
  server = await startObjectServer(root, { bucket: "public-bucket", maxKeys: 2 });
});
afterAll(async () => {
  await server?.close();
  rmSync(base, { recursive: true, force: true });
});

describe("FileStore", () => {
  it("reads whole files, ranges and suffixes; missing keys are undefined", async () => {
    const s = await FileStore.open(`file://${root}/vol`, [root]);
    expect(await s.get("a.bin")).toEqual(bytes);
    expect(await s.get("a.bin", { range: [10, 20] })).toEqual(bytes.subarray(10, 20));
    expect(await s.get("a.bin", { range: [290, 400] })).toEqual(bytes.subarray(290));
    expect(await s.get("a.bin", { suffixLength: 7 })).toEqual(bytes.subarray(293));
    expect(await s.get("missing.bin")).toBeUndefined();
    expect(await s.get("sub")).toBeUndefined();
    expect(await s.get("link-in")).toEqual(bytes);
    await expect(s.get("a.bin", { range: [20, 10] })).rejects.toMatchObject({ _tag: "InvalidArgument", field: "range" });
  });

  it("reads a single-file root through the empty key", async () => {
    const s = await FileStore.open(path.join(root, "vol/a.bin"), [root]);
    expect(await s.get("", { range: [0, 3] })).toEqual(bytes.subarray(0, 3));
  });

  it.each([
    ["a `..` key", "../../outside/secret.txt"],
    ["a `..` segment in the middle", "sub/../../x"],
    ["an absolute key", "/etc/passwd"],
    ["a symlink to a file outside the root", "link-out"],
    ["a path through a symlinked folder outside the root", "dir-out/secret.txt"],
  ])("refuses %s with PermissionDenied naming the key", async (_, key) => {
    const s = await FileStore.open(`${root}/vol`, [root]);
    await expect(s.get(key)).rejects.toMatchObject({ _tag: "PermissionDenied", field: key });
  });

  it("refuses roots outside the allowed roots, also via `..` and symlinks", async () => {
    await expect(FileStore.open(outside, [root])).rejects.toMatchObject({ _tag: "PermissionDenied" });
    await expect(FileStore.open(`${root}/../outside`, [root])).rejects.toMatchObject({ _tag: "PermissionDenied" });
    await expect(FileStore.open(`${root}/vol/dir-out`, [root])).rejects.toMatchObject({ _tag: "PermissionDenied" });
    await expect(FileStore.open(root, [])).rejects.toMatchObject({ _tag: "PermissionDenied" });
  });

  it("lists entries directly under a prefix", async () => {
    const s = await FileStore.open(`${root}/vol`, [root]);
    expect(await s.list("sub")).toEqual(["sub/b.bin"]);
    expect(await s.list("")).toContain("a.bin");
    expect(await s.list("nope")).toEqual([]);
  });

  it("writes atomically: the target appears whole, no temp file remains, writes through symlinks out are refused", async () => {
    const s = await FileStore.open(`${root}/vol`, [root]);
    await s.put("new/deep/c.bin", Uint8Array.of(1, 2, 3));
    expect([...readFileSync(path.join(root, "vol/new/deep/c.bin"))]).toEqual([1, 2, 3]);
    await s.put("new/deep/c.bin", Uint8Array.of(4));
    expect([...readFileSync(path.join(root, "vol/new/deep/c.bin"))]).toEqual([4]);
    expect(readdirSync(path.join(root, "vol/new/deep"))).toEqual(["c.bin"]);
    await expect(s.put("dir-out/evil.txt", Uint8Array.of(1))).rejects.toMatchObject({ _tag: "PermissionDenied" });
    await expect(s.put("../evil.txt", Uint8Array.of(1))).rejects.toMatchObject({ _tag: "PermissionDenied" });
    expect(readdirSync(outside)).toEqual(["secret.txt"]);
  });
});

describe("HttpStore", () => {
  it("gets objects and ranges with Range headers; 404 is undefined", async () => {
    const s = new HttpStore(`${server.httpBase}/vol`);
    expect(await s.get("a.bin")).toEqual(bytes);
    const before = server.requests.length;
    expect(await s.get("a.bin", { range: [5, 9] })).toEqual(bytes.subarray(5, 9));
    expect(server.requests[before]!.range).toBe("bytes=5-8");
    expect(await s.get("a.bin", { suffixLength: 4 })).toEqual(bytes.subarray(296));
    expect(await s.get("a.bin", { range: [400, 500] })).toEqual(new Uint8Array(0));
    expect(await s.get("missing.bin")).toBeUndefined();
  });

  it("fails with FailedPrecondition naming the URL when the server is unreachable, Cancelled when aborted", async () => {
    const s = new HttpStore("http://127.0.0.1:1/x");
    await expect(s.get("a")).rejects.toMatchObject({ _tag: "FailedPrecondition", field: "http://127.0.0.1:1/x/a" });
    const ac = new AbortController();
    ac.abort();
    await expect(new HttpStore(server.httpBase).get("vol/a.bin", { signal: ac.signal })).rejects.toMatchObject({ _tag: "Cancelled" });
  });
});

describe("S3Store", () => {
  it("gets objects by path-style requests to the endpoint and lists with ListObjectsV2 (paged)", async () => {
    const s = new S3Store("s3://public-bucket/vol", { endpoint: server.s3Endpoint });
    expect(await s.get("a.bin", { range: [1, 3] })).toEqual(bytes.subarray(1, 3));
    expect(await s.get("missing")).toBeUndefined();
    expect((await s.list("")).filter((k) => k !== "new")).toEqual(["a.bin", "dir-out", "link-in", "link-out", "sub", "weird & <name>.txt"]);
    expect(await s.list("sub")).toEqual(["sub/b.bin"]);
  });

  it("takes the endpoint from SPATIAL_SAM_S3_ENDPOINT, drops a ?query (a driver option) and refuses malformed URLs", async () => {
    process.env.SPATIAL_SAM_S3_ENDPOINT = server.s3Endpoint;
    try {
      const s = await openStore("s3://public-bucket/vol/sub", { roots: [] });
      expect(new TextDecoder().decode(await s.get("b.bin"))).toBe("b");
    } finally {
      delete process.env.SPATIAL_SAM_S3_ENDPOINT;
    }
    const withQuery = await openStore(`${server.httpBase}/vol?voxel_size_nm=1,2,3`, { roots: [] });
    expect(await withQuery.get("a.bin", { range: [0, 2] })).toEqual(bytes.subarray(0, 2));
    const fileWithQuery = await openStore(`${root}/vol?voxel_size_nm=1,2,3`, { roots: [root] });
    expect(await fileWithQuery.get("a.bin", { range: [0, 2] })).toEqual(bytes.subarray(0, 2));
    expect(() => new S3Store("s3://")).toThrow(expect.objectContaining({ _tag: "InvalidArgument", field: "url" }));
    await expect(openStore("ftp://host/x", { roots: [] })).rejects.toMatchObject({ _tag: "InvalidArgument", field: "url" });
  });
});
