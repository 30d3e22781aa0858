// Where the viewer starts a live session on a volume too large for one: the xy panel's visible
// extent (clamped to the volume) times as many slices around the current one as the bridge's
// session voxel limit allows. Pure arithmetic, so it is tested without a browser.

/** A half-open voxel box, as the bridge's `POST /api/sessions` takes it. */
export interface SessionBox {
  x0: number;
  y0: number;
  z0: number;
  x1: number;
  y1: number;
  z1: number;
}

/** The image's first level: its origin and size, zyx voxels. */
export interface Level {
  offsetZyx: readonly number[];
  shapeZyx: readonly number[];
}

/** `[lo, lo + n)` placed to hold `c` (as centred as it can be), inside `[a, b)`. */
function span(c: number, n: number, a: number, b: number): [number, number] {
  const len = Math.min(n, b - a);
  const lo = Math.min(Math.max(a, Math.floor(c) - Math.floor(len / 2)), b - len);
  return [lo, lo + len];
}

/**
 * The session box around `at` (continuous voxel coordinates x, y, z; voxel i covers [i, i + 1)),
 * or undefined when the whole level fits `maxVoxels` (the bridge's default box). The xy extent is
 * `view` clamped to the level (a square around `at` where the view is missing or holds more than
 * `maxVoxels` per slice); z: as many slices around `at` as fit, at most the limit's cube root (a
 * session far deeper than wide helps nobody and costs the server).
 */
export function sessionBox(level: Level, maxVoxels: number, at: readonly [number, number, number], view?: { x0: number; y0: number; x1: number; y1: number }): SessionBox | undefined {
  const [oz, oy, ox] = level.offsetZyx as [number, number, number];
  const [sz, sy, sx] = level.shapeZyx as [number, number, number];
  if (sz * sy * sx <= maxVoxels) return undefined;
  let x: [number, number] | undefined;
  let y: [number, number] | undefined;
  if (view !== undefined) {
    x = [Math.max(ox, Math.floor(Math.min(view.x0, at[0]))), Math.min(ox + sx, Math.ceil(Math.max(view.x1, at[0] + 1)))];
    y = [Math.max(oy, Math.floor(Math.min(view.y0, at[1]))), Math.min(oy + sy, Math.ceil(Math.max(view.y1, at[1] + 1)))];
    if (x[1] <= x[0] || y[1] <= y[0] || (x[1] - x[0]) * (y[1] - y[0]) > maxVoxels) x = y = undefined;
  }
  if (x === undefined || y === undefined) {
    const side = Math.max(1, Math.floor(Math.sqrt(maxVoxels)));
    x = span(at[0], side, ox, ox + sx);
    y = span(at[1], side, oy, oy + sy);
  }
  const area = (x[1] - x[0]) * (y[1] - y[0]);
  const depth = Math.max(1, Math.min(Math.floor(maxVoxels / area), Math.round(Math.cbrt(maxVoxels))));
  const z = span(at[2], depth, oz, oz + sz);
  return { x0: x[0], y0: y[0], z0: z[0], x1: x[1], y1: y[1], z1: z[1] };
}

/** Whether the voxel under `at` (continuous x, y, z) lies in the session box (zyx offset and shape). */
export function inSessionBox(box: Level, at: readonly [number, number, number]): boolean {
  const zyx = [at[2], at[1], at[0]];
  return zyx.every((v, d) => Math.floor(v) >= box.offsetZyx[d]! && Math.floor(v) < box.offsetZyx[d]! + box.shapeZyx[d]!);
}
