// A synthetic FIB-SEM-like demo volume with mitochondria and their instance labels, generated
// deterministically from a seed, so the project's demo needs no downloaded data.
//
// Mitochondria are capsules (segments with a radius) at random orientations, drawn as a dark
// double membrane around a mid-grey matrix with darker cristae stripes, on a textured cytoplasm
// with other membranes (thin dark sheets) as distractors, plus Gaussian-like noise.

import type { Vec3 } from "#src/volume/types.ts";

export interface DemoVolume {
  shapeZyx: Vec3;
  /** uint8 EM-like intensities, C order (z, y, x). */
  image: Uint8Array;
  /** uint64 instance ids (0 = background), C order (z, y, x). */
  labels: BigUint64Array;
  /** Ids present in `labels`, ascending. */
  objectIds: bigint[];
}

/** mulberry32: a small, fast, well-distributed 32-bit PRNG (public domain algorithm). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Capsule {
  a: Vec3;
  b: Vec3;
  radius: number;
}

/** Distance from p to segment ab, in voxels (isotropic voxels are assumed). */
function segmentDistance(p: Vec3, c: Capsule): number {
  const ab = [c.b[0] - c.a[0], c.b[1] - c.a[1], c.b[2] - c.a[2]];
  const ap = [p[0] - c.a[0], p[1] - c.a[1], p[2] - c.a[2]];
  const len2 = ab[0]! * ab[0]! + ab[1]! * ab[1]! + ab[2]! * ab[2]!;
  const t = len2 === 0 ? 0 : Math.max(0, Math.min(1, (ap[0]! * ab[0]! + ap[1]! * ab[1]! + ap[2]! * ab[2]!) / len2));
  const d0 = ap[0]! - t * ab[0]!;
  const d1 = ap[1]! - t * ab[1]!;
  const d2 = ap[2]! - t * ab[2]!;
  return Math.sqrt(d0 * d0 + d1 * d1 + d2 * d2);
}

export function makeDemoVolume(shapeZyx: Vec3 = [64, 256, 256], seed = 1, count = 24): DemoVolume {
  const [Z, Y, X] = shapeZyx;
  const rand = prng(seed);
  const capsules: Capsule[] = [];
  for (let attempt = 0; capsules.length < count && attempt < count * 50; attempt++) {
    const radius = 6 + rand() * 7;
    const length = 10 + rand() * 40;
    const centre: Vec3 = [radius + rand() * (Z - 2 * radius), radius + rand() * (Y - 2 * radius), radius + rand() * (X - 2 * radius)];
    // Mitochondria in slices are mostly elongated in-plane; keep some z extent.
    const dz = (rand() - 0.5) * 0.6;
    const angle = rand() * Math.PI;
    const dir: Vec3 = [dz, Math.sin(angle), Math.cos(angle)];
    const n = Math.hypot(...dir);
    const half = length / 2;
    const a: Vec3 = [centre[0] - (dir[0] / n) * half, centre[1] - (dir[1] / n) * half, centre[2] - (dir[2] / n) * half];
    const b: Vec3 = [centre[0] + (dir[0] / n) * half, centre[1] + (dir[1] / n) * half, centre[2] + (dir[2] / n) * half];
    const c = { a, b, radius };
    // Keep objects apart so that instance ids are unambiguous (touching ones would merge).
    const clear = capsules.every((o) => {
      const mid: Vec3 = [(o.a[0] + o.b[0]) / 2, (o.a[1] + o.b[1]) / 2, (o.a[2] + o.b[2]) / 2];
      return segmentDistance(mid, c) > o.radius + c.radius + 4 && segmentDistance(o.a, c) > o.radius + c.radius + 4 && segmentDistance(o.b, c) > o.radius + c.radius + 4;
    });
    if (clear) capsules.push(c);
  }

  const image = new Float32Array(Z * Y * X);
  const labels = new BigUint64Array(Z * Y * X);
  const sheets = Array.from({ length: 4 }, () => ({ y0: rand() * Y, slope: (rand() - 0.5) * 0.8, wobble: rand() * 6 }));
  for (let z = 0; z < Z; z++) {
    for (let y = 0; y < Y; y++) {
      for (let x = 0; x < X; x++) {
        // Cytoplasm texture (a few low-frequency waves) crossed by thin dark membrane sheets.
        let v = 170 + 12 * Math.sin(x * 0.11 + z * 0.07) * Math.cos(y * 0.09 - z * 0.05);
        for (const s of sheets) {
          const d = Math.abs(y - (s.y0 + s.slope * x + s.wobble * Math.sin(z * 0.1 + x * 0.03)));
          if (d < 1.2) v -= 70 * (1 - d / 1.2);
        }
        image[(z * Y + y) * X + x] = v;
      }
    }
  }
  capsules.forEach((c, k) => {
    const id = BigInt(k + 1);
    const phase = rand() * Math.PI * 2;
    const lo = [0, 1, 2].map((a) => Math.max(0, Math.floor(Math.min(c.a[a]!, c.b[a]!) - c.radius)));
    const hi = [0, 1, 2].map((a) => Math.min(shapeZyx[a]! - 1, Math.ceil(Math.max(c.a[a]!, c.b[a]!) + c.radius)));
    for (let z = lo[0]!; z <= hi[0]!; z++)
      for (let y = lo[1]!; y <= hi[1]!; y++)
        for (let x = lo[2]!; x <= hi[2]!; x++) {
          const d = segmentDistance([z, y, x], c);
          if (d > c.radius) continue;
          const i = (z * Y + y) * X + x;
          labels[i] = id;
          // A dark double membrane around a mid-grey matrix with darker cristae stripes.
          if (c.radius - d < 1.6) image[i] = 45;
          else image[i] = 120 + 10 * Math.sin(y * 0.3) - (Math.sin(x * 0.9 + y * 0.5 + z * 0.2 + phase) > 0.75 ? 45 : 0);
        }
  });
  const out = new Uint8Array(Z * Y * X);
  for (let i = 0; i < out.length; i++) {
    // Deterministic noise (a sum of uniforms, roughly Gaussian with sigma about 9).
    const v = image[i]! + (rand() + rand() + rand() - 1.5) * 18;
    out[i] = Math.max(0, Math.min(255, Math.round(v)));
  }
  const objectIds = capsules.map((_, k) => BigInt(k + 1)).filter((id) => labels.includes(id));
  return { shapeZyx, image: out, labels, objectIds };
}
