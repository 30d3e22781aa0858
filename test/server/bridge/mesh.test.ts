// Segment meshes over a real socket: analytic shapes written as a real chunked precomputed
// segmentation (voxel offset, anisotropic voxels, chunks that do not divide the volume), their
// legacy-mesh fragments fetched from the bridge, welded together and compared with scikit-image's
// marching cubes on the same voxels; closedness across fragment boundaries; bad ids answered 400.
import { execFileSync } from "node:child_process";
import { createServer, type Server } from "node:http";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import express from "express";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { decodeLegacyFragment, type TriangleMesh } from "#src/mesh/legacy_mesh.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { createBridge, type Bridge } from "#server/bridge/bridge.ts";
import { silentLogger } from "#server/log.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";
import { closeHttp, listenRouter } from "#test/helpers/test_server.ts";
import { PYTHON, tempDir } from "#test/server/volume/precomputed_helpers.ts";

const SHAPE: Vec3 = [30, 50, 60];
const CHUNK: Vec3 = [12, 16, 20];
const OFFSET: Vec3 = [2, -3, 5];
const VOXEL_NM: Vec3 = [8, 5, 4];
/** An ellipsoid across many chunks, id beyond 2^53. */
const ELLIPSOID = 2n ** 40n + 5n;
const ELLIPSOID_CENTRE: Vec3 = [14.3, 24.6, 29.2];
const ELLIPSOID_AXES: Vec3 = [10, 17, 22];
/** A box cut by the volume's faces (x high, y low): its surface must close there. */
const EDGE_BOX = 7n;
/** A ball around a chunk corner. */
const BALL = 9n;

let dir: string;
let bridge: Bridge;
let http: Server;
let base: string;
let labels: BigUint64Array;

function idAt(z: number, y: number, x: number): bigint {
  const e = ((z - ELLIPSOID_CENTRE[0]) / ELLIPSOID_AXES[0]) ** 2 + ((y - ELLIPSOID_CENTRE[1]) / ELLIPSOID_AXES[1]) ** 2 + ((x - ELLIPSOID_CENTRE[2]) / ELLIPSOID_AXES[2]) ** 2;
  if (e <= 1) return ELLIPSOID;
  if (z >= 20 && z < 30 && y < 8 && x >= 52) return EDGE_BOX;
  if ((z - 24) ** 2 + (y - 44) ** 2 + (x - 40) ** 2 <= 4.2 ** 2) return BALL;
  return 0n;
}

beforeAll(async () => {
  dir = tempDir("mesh");
  labels = new BigUint64Array(SHAPE[0] * SHAPE[1] * SHAPE[2]);
  for (let z = 0; z < SHAPE[0]; z++) for (let y = 0; y < SHAPE[1]; y++) for (let x = 0; x < SHAPE[2]; x++) labels[(z * SHAPE[1] + y) * SHAPE[2] + x] = idAt(z, y, x);
  const seg = await writePrecomputedArray(dir, "labels", "uint64", labels, SHAPE, VOXEL_NM, { type: "segmentation", chunkZyx: CHUNK, offsetZyx: OFFSET });
  const img = await writePrecomputedArray(dir, "image", "uint8", new Uint8Array(8 * 8 * 8), [8, 8, 8]);
  bridge = await createBridge({ roots: [dir], log: silentLogger(), volumes: [{ id: "seg", url: seg }, { id: "img", url: img }] });
  ({ http, base } = await listenRouter(bridge.router));
});

afterAll(async () => {
  await closeHttp(http);
  await bridge?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function getJson(path: string) {
  const res = await fetch(`${base}${path}`);
  return { status: res.status, json: (await res.json()) as Record<string, unknown> };
}

/** All fragments of a segment, fetched as Neuroglancer does (manifest, then each fragment). */
async function fetchMesh(segment: bigint): Promise<{ fragments: string[]; meshes: TriangleMesh[] }> {
  const manifest = await getJson(`/volumes/seg/mesh/${segment}:0`);
  expect(manifest.status).toBe(200);
  const fragments = manifest.json.fragments as string[];
  const meshes: TriangleMesh[] = [];
  for (const f of fragments) {
    const res = await fetch(`${base}/volumes/seg/mesh/${f}`);
    expect(res.status).toBe(200);
    meshes.push(decodeLegacyFragment(new Uint8Array(await res.arrayBuffer())));
  }
  return { fragments, meshes };
}

interface Measured {
  area: number;
  /** Signed, by the divergence theorem: positive when normals point outwards. */
  volume: number;
  /** Edges not shared by exactly two triangles after welding fragments by position. */
  openEdges: number;
  triangles: number;
  minXyz: Vec3;
  maxXyz: Vec3;
}

/** Welds the fragments' vertices by exact position (shared boundaries give identical floats) and measures. */
function measure(meshes: TriangleMesh[]): Measured {
  const ids = new Map<string, number>();
  const points: Vec3[] = [];
  const edges = new Map<string, number>();
  let area = 0;
  let volume = 0;
  let triangles = 0;
  for (const m of meshes) {
    const global = Array.from({ length: m.positionsXyz.length / 3 }, (_, i) => {
      const p: Vec3 = [m.positionsXyz[3 * i]!, m.positionsXyz[3 * i + 1]!, m.positionsXyz[3 * i + 2]!];
      const key = p.join(",");
      let id = ids.get(key);
      if (id === undefined) {
        id = points.length;
        ids.set(key, id);
        points.push(p);
      }
      return id;
    });
    for (let t = 0; t < m.indices.length; t += 3) {
      const [a, b, c] = [global[m.indices[t]!]!, global[m.indices[t + 1]!]!, global[m.indices[t + 2]!]!];
      const [A, B, C] = [points[a]!, points[b]!, points[c]!];
      const u = [B[0] - A[0], B[1] - A[1], B[2] - A[2]];
      const v = [C[0] - A[0], C[1] - A[1], C[2] - A[2]];
      const n = [u[1]! * v[2]! - u[2]! * v[1]!, u[2]! * v[0]! - u[0]! * v[2]!, u[0]! * v[1]! - u[1]! * v[0]!];
      area += Math.hypot(n[0]!, n[1]!, n[2]!) / 2;
      volume += (A[0] * n[0]! + A[1] * n[1]! + A[2] * n[2]!) / 6;
      triangles++;
      for (const [p, q] of [
        [a, b],
        [b, c],
        [c, a],
      ] as const) {
        const k = p < q ? `${p},${q}` : `${q},${p}`;
        edges.set(k, (edges.get(k) ?? 0) + 1);
      }
    }
  }
  const minXyz = [0, 1, 2].map((d) => Math.min(...points.map((p) => p[d]!))) as Vec3;
  const maxXyz = [0, 1, 2].map((d) => Math.max(...points.map((p) => p[d]!))) as Vec3;
  return { area, volume, triangles, openEdges: [...edges.values()].filter((n) => n !== 2).length, minXyz, maxXyz };
}

/** scikit-image's marching cubes at level 0.5 on the segment's voxels (padded by background) with the voxel size as spacing. */
function skimageReference(segments: bigint[]): Map<bigint, { area: number; volume: number }> {
  const file = join(dir, "labels.u64");
  writeFileSync(file, new Uint8Array(labels.buffer));
  const script = `
import json, sys
import numpy as np
from skimage.measure import marching_cubes, mesh_surface_area
labels = np.fromfile(sys.argv[1], dtype=np.uint64).reshape(${SHAPE.join(",")})
out = {}
for s in sys.argv[2:]:
    mask = np.pad(labels == np.uint64(s), 1).astype(np.float32)
    verts, faces, _, _ = marching_cubes(mask, 0.5, spacing=(${VOXEL_NM.join(",")}))
    p = verts[faces]
    volume = abs(np.einsum("ij,ij->i", p[:, 0], np.cross(p[:, 1], p[:, 2])).sum() / 6)
    out[s] = {"area": float(mesh_surface_area(verts, faces)), "volume": float(volume)}
print(json.dumps(out))
`;
  const json = JSON.parse(execFileSync(PYTHON, ["-c", script, file, ...segments.map(String)], { encoding: "utf8" })) as Record<string, { area: number; volume: number }>;
  return new Map(Object.entries(json).map(([k, v]) => [BigInt(k), v]));
}

/** The segment's voxels: count and bounding box (zyx, volume coordinates including the offset). */
function voxelsOf(segment: bigint): { count: number; lo: Vec3; hi: Vec3 } {
  const lo: Vec3 = [Infinity, Infinity, Infinity];
  const hi: Vec3 = [-Infinity, -Infinity, -Infinity];
  let count = 0;
  for (let z = 0; z < SHAPE[0]; z++)
    for (let y = 0; y < SHAPE[1]; y++)
      for (let x = 0; x < SHAPE[2]; x++) {
        if (labels[(z * SHAPE[1] + y) * SHAPE[2] + x] !== segment) continue;
        count++;
        [z, y, x].forEach((v, d) => {
          lo[d] = Math.min(lo[d]!, v + OFFSET[d]!);
          hi[d] = Math.max(hi[d]!, v + OFFSET[d]! + 1);
        });
      }
  return { count, lo, hi };
}

describe("segment meshes (precomputed legacy)", () => {
  it("announces a legacy mesh folder for segmentations only", async () => {
    expect((await getJson("/volumes/seg/info")).json.mesh).toBe("mesh");
    expect((await getJson("/volumes/img/info")).json.mesh).toBeUndefined();
    expect(await getJson("/volumes/seg/mesh/info")).toEqual({ status: 200, json: { "@type": "neuroglancer_legacy_mesh" } });
  });

  it("meshes analytic shapes as closed surfaces with scikit-image's area and volume, placed in nm", async () => {
    const reference = skimageReference([ELLIPSOID, EDGE_BOX, BALL]);
    const voxelNm3 = VOXEL_NM[0] * VOXEL_NM[1] * VOXEL_NM[2];
    const fragmentCounts: Record<string, number> = {};
    for (const segment of [ELLIPSOID, EDGE_BOX, BALL]) {
      const { fragments, meshes } = await fetchMesh(segment);
      fragmentCounts[String(segment)] = fragments.length;
      const m = measure(meshes);
      const ref = reference.get(segment)!;
      const voxels = voxelsOf(segment);
      console.log(
        `segment ${segment}: ${fragments.length} fragments, ${m.triangles} triangles, area ${m.area.toFixed(0)} nm^2 ` +
          `(skimage ${ref.area.toFixed(0)}, rel. diff ${(Math.abs(m.area - ref.area) / ref.area).toExponential(1)}), volume ${m.volume.toFixed(0)} nm^3 ` +
          `(skimage ${ref.volume.toFixed(0)}, rel. diff ${(Math.abs(m.volume - ref.volume) / ref.volume).toExponential(1)}; voxels ${voxels.count * voxelNm3})`,
      );
      // Closed across fragment (chunk) boundaries and at the volume's faces: every edge in exactly two triangles.
      expect(m.openEdges, `segment ${segment}`).toBe(0);
      // The same marching cubes as scikit-image (level 0.5 between voxel centres, so the same
      // vertices); the tables (Bourke's vs Lewiner's) could only triangulate ambiguous cubes
      // differently, which these shapes do not have: equal to 1e-6 (measured about 1e-14).
      expect(Math.abs(m.area - ref.area) / ref.area, `area of ${segment}`).toBeLessThan(1e-6);
      expect(Math.abs(m.volume - ref.volume) / ref.volume, `volume of ${segment}`).toBeLessThan(1e-6);
      // Outward normals; the enclosed volume is the voxels' volume up to the corners cut by marching cubes (< 5 %).
      expect(m.volume).toBeGreaterThan(0);
      expect(Math.abs(m.volume - voxels.count * voxelNm3) / (voxels.count * voxelNm3)).toBeLessThan(0.05);
      // Level 0.5 between an inside and an outside voxel centre is the voxel face between them:
      // the mesh spans exactly the segment's voxels, offset included, in nm.
      for (let d = 0; d < 3; d++) {
        expect(m.minXyz[d]).toBeCloseTo(voxels.lo[2 - d]! * VOXEL_NM[2 - d]!, 3);
        expect(m.maxXyz[d]).toBeCloseTo(voxels.hi[2 - d]! * VOXEL_NM[2 - d]!, 3);
      }
    }
    // The ellipsoid's analytic volume (4/3 pi abc voxels), within the voxelisation error.
    const [a, b, c] = ELLIPSOID_AXES;
    const analytic = (4 / 3) * Math.PI * a * b * c * voxelNm3;
    expect(Math.abs(measure((await fetchMesh(ELLIPSOID)).meshes).volume - analytic) / analytic).toBeLessThan(0.03);
    // The ellipsoid spans 3 x 4 x 3 chunks: one fragment per chunk its surface passes through.
    expect(fragmentCounts[String(ELLIPSOID)]).toBeGreaterThan(8);
  });

  it("caches fragments per (volume, version, segment) and recomputes after the version changes", async () => {
    await fetchMesh(BALL);
    const before = bridge.meshes.stats;
    await fetchMesh(BALL);
    expect(bridge.meshes.stats.fragmentsComputed).toBe(before.fragmentsComputed);
    expect(bridge.meshes.stats.fragmentsCached).toBeGreaterThan(before.fragmentsCached);

    const v = bridge.volumes.get("seg");
    let version = 1;
    v.version = () => version;
    try {
      const scanned = bridge.meshes.stats.chunksScanned;
      const { fragments } = await fetchMesh(BALL);
      const after = bridge.meshes.stats;
      expect(after.fragmentsComputed).toBeGreaterThan(before.fragmentsComputed);
      // A new version is rescanned: the whole volume is 3 x 4 x 3 chunks.
      expect(after.chunksScanned - scanned).toBe(36);
      // With an index of the segment's chunks, nothing is scanned and the same fragments result.
      const chunksOf = new Map<bigint, Vec3[]>();
      for (let cz = 0; cz < 3; cz++)
        for (let cy = 0; cy < 4; cy++)
          for (let cx = 0; cx < 3; cx++)
            for (let z = cz * CHUNK[0]; z < Math.min(SHAPE[0], (cz + 1) * CHUNK[0]); z++)
              for (let y = cy * CHUNK[1]; y < Math.min(SHAPE[1], (cy + 1) * CHUNK[1]); y++)
                for (let x = cx * CHUNK[2]; x < Math.min(SHAPE[2], (cx + 1) * CHUNK[2]); x++) {
                  const id = labels[(z * SHAPE[1] + y) * SHAPE[2] + x]!;
                  const list = chunksOf.get(id) ?? [];
                  if (!list.some((c) => c[0] === cz && c[1] === cy && c[2] === cx)) list.push([cz, cy, cx]);
                  chunksOf.set(id, list);
                }
      v.segmentChunks = async (segment) => chunksOf.get(segment) ?? [];
      version = 2;
      expect((await fetchMesh(BALL)).fragments).toEqual(fragments);
      expect(bridge.meshes.stats.chunksScanned).toBe(after.chunksScanned);
    } finally {
      delete v.version;
      delete v.segmentChunks;
    }
  });

  it("refuses to scan a volume beyond its limit (429 naming segment) and then selects no segments by default", async () => {
    const small = await createBridge({ roots: [dir], log: silentLogger(), volumes: [{ id: "seg", url: `precomputed://file://${join(dir, "labels")}` }], meshes: { maxScanVoxels: 1000 } });
    const app = express();
    app.use(small.router);
    const server = createServer(app);
    await new Promise<void>((res) => server.listen(0, "127.0.0.1", () => res()));
    const a = server.address();
    const url = `http://127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}`;
    try {
      const r = await fetch(`${url}/volumes/seg/mesh/${BALL}:0`);
      expect(r.status).toBe(429);
      expect(await r.json()).toMatchObject({ error: "ResourceExhausted", field: "segment" });
      const state = (await (await fetch(`${url}/api/viewer/state`)).json()) as { layers: Record<string, unknown>[] };
      expect(state.layers[0]!.segments).toBeUndefined();
      // A fragment needs no scan: it is still served.
      const f = await fetch(`${url}/volumes/seg/mesh/${BALL}:0:45-65_29-45_26-32`);
      expect(f.status).toBe(200);
      expect((await f.arrayBuffer()).byteLength).toBeGreaterThan(4);
      expect(small.meshes.stats.chunksScanned).toBe(0);
    } finally {
      await new Promise<void>((res) => server.close(() => res()));
      await small.close();
    }
  });

  it("answers an absent segment with no fragments, and bad names with 400/404 naming the field", async () => {
    expect(await getJson("/volumes/seg/mesh/12345:0")).toEqual({ status: 200, json: { fragments: [] } });
    expect(await getJson("/volumes/seg/mesh/0:0")).toEqual({ status: 200, json: { fragments: [] } });
    const cases: [string, number, string][] = [
      ["/volumes/seg/mesh/abc:0", 400, "segment"],
      ["/volumes/seg/mesh/-1:0", 400, "segment"],
      ["/volumes/seg/mesh/18446744073709551616:0", 400, "segment"],
      ["/volumes/seg/mesh/123456789012345678901234:0", 400, "segment"],
      ["/volumes/seg/mesh/5", 400, "mesh"],
      ["/volumes/seg/mesh/5:1", 404, "lod"],
      [`/volumes/seg/mesh/9:0:5-25_-3-13_2-14:extra`, 400, "mesh"],
      [`/volumes/seg/mesh/9:0:6-25_-3-13_2-14`, 400, "chunk.x"],
      [`/volumes/seg/mesh/9:0:5-25_-3-13_2-15`, 400, "chunk.z"],
      ["/volumes/nope/mesh/9:0", 404, "id"],
      // An image has no meshes: the path is a chunk path there, and "mesh" no scale.
      ["/volumes/img/mesh/9:0", 404, "scaleKey"],
    ];
    for (const [path, status, field] of cases) {
      const r = await getJson(path);
      expect([path, r.status, r.json.field]).toEqual([path, status, field]);
    }
    // The largest valid id parses (and has no mesh here).
    expect(await getJson("/volumes/seg/mesh/18446744073709551615:0")).toEqual({ status: 200, json: { fragments: [] } });
  });
});
