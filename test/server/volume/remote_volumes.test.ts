// Zarr and N5 fixtures read over http:// (Range requests) and s3:// (the endpoint override) from a
// real local server, compared voxel for voxel with the generator's arrays; concurrent reads of the
// same chunks fetch each chunk once.

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ChunkCache } from "#server/volume/chunk_cache.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { startObjectServer } from "#test/helpers/object_server.ts";
import type { ObjectServer } from "#test/helpers/object_server.ts";
import { expectSameArray, makeZarrN5Fixtures, schemeOf } from "#test/helpers/zarr_n5_fixtures.ts";
import type { ZarrN5Fixtures } from "#test/helpers/zarr_n5_fixtures.ts";

let fx: ZarrN5Fixtures;
let server: ObjectServer;
beforeAll(async () => {
  fx = makeZarrN5Fixtures();
  server = await startObjectServer(fx.dir, { bucket: "janelia-cosem-datasets" });
});
afterAll(async () => {
  await server?.close();
  fx?.cleanup();
});

const CASES = ["zarr2_gzip_u16", "zarr3_sharded_u8", "zarr3_blosc_u64", "ome04", "n5_zstd_u64", "n5_multiscale"];

describe.each(CASES)("%s", (name) => {
  it.each(["http", "s3"])("reads every level exactly over %s", async (transport) => {
    const c = fx.cases.get(name)!;
    const where = transport === "http" ? `${server.httpBase}/${c.url}` : `s3://${server.bucket}/${c.url}`;
    const vol = await openVolume(`${schemeOf(c)}://${where}`, { roots: [], s3Endpoint: server.s3Endpoint, cache: new ChunkCache({ maxBytes: 1 << 24 }) });
    for (const [i] of c.levels.entries()) {
      const s = vol.metadata.scales[i]!;
      expectSameArray(await vol.read({ offsetZyx: s.offsetZyx, shapeZyx: s.shapeZyx }, i), fx.expected(c, i));
    }
  });
});

it("reads sharded chunks with range requests (shard index by suffix, chunks by byte range)", async () => {
  const c = fx.cases.get("zarr3_sharded_u8")!;
  const before = server.requests.length;
  const vol = await openVolume(`zarr://${server.httpBase}/${c.url}`, { roots: [], cache: new ChunkCache({ maxBytes: 1 << 24 }) });
  await vol.read({ offsetZyx: [0, 0, 0], shapeZyx: [8, 16, 16] }, 0);
  const ranges = server.requests.slice(before).filter((r) => r.path.includes("/c/"));
  expect(ranges.length).toBeGreaterThan(0);
  expect(ranges.every((r) => r.range !== undefined)).toBe(true);
  expect(ranges.some((r) => r.range!.startsWith("bytes=-"))).toBe(true);
});

it("fetches each chunk once for concurrent reads of the same region", async () => {
  const c = fx.cases.get("zarr2_gzip_u16")!;
  const cache = new ChunkCache({ maxBytes: 1 << 24 });
  const vol = await openVolume(`zarr://${server.httpBase}/${c.url}`, { roots: [], cache });
  const before = server.requests.length;
  const box = { offsetZyx: [0, 0, 0] as [number, number, number], shapeZyx: [19, 30, 37] as [number, number, number] };
  const [a, b, d] = await Promise.all([vol.read(box, 0), vol.read(box, 0), vol.read(box, 0)]);
  expectSameArray(a, fx.expected(c, 0));
  expectSameArray(b, a);
  expectSameArray(d, a);
  const chunkRequests = server.requests.slice(before).filter((r) => /\/\d+\.\d+\.\d+$/.test(r.path));
  const chunksInGrid = 3 * 2 * 3;
  expect(chunkRequests.length).toBe(chunksInGrid);
  expect(new Set(chunkRequests.map((r) => r.path)).size).toBe(chunksInGrid);
  expect(cache.stats().coalesced).toBeGreaterThan(0);
});
