// Slice overlays coloured as in the paper: cyan = true positive, magenta = false negative, yellow =
// false positive, blended over the grey EM image (or over black without one), encoded as PNG.

import { PNG } from "pngjs";
import { invalidArgument } from "#src/errors.ts";
import type { TypedArray } from "#src/dtype.ts";
import type { Vec3, VolumeSource } from "#src/volume/types.ts";
import { isForeground } from "./slice_stats.ts";

export const OVERLAY_COLOURS = {
  truePositive: [0, 255, 255],
  falseNegative: [255, 0, 255],
  falsePositive: [255, 255, 0],
} as const satisfies Record<string, readonly [number, number, number]>;

/** Weight of the class colour over the grey image (1 = opaque). */
export const OVERLAY_ALPHA = 0.5;

/**
 * Grey levels of one slice as 0..255: uint8 as stored; any other dtype stretched from the slice's
 * minimum to its maximum (EM from 16-bit or float volumes has no fixed display range).
 */
export function greyLevels(image: TypedArray, uint8: boolean): Uint8Array {
  const n = image.length;
  const out = new Uint8Array(n);
  if (uint8) {
    out.set(image as Uint8Array);
    return out;
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = Number(image[i]!);
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const span = hi > lo ? 255 / (hi - lo) : 0;
  for (let i = 0; i < n; i++) out[i] = Math.round((Number(image[i]!) - lo) * span);
  return out;
}

/**
 * RGBA pixels of one y*x slice. Voxels outside the mask show the image only; every other voxel is
 * coloured by its class, blended at OVERLAY_ALPHA over the image when one is given.
 */
export function overlayRgba(gt: TypedArray, pred: TypedArray, options: { mask?: TypedArray; grey?: Uint8Array } = {}): Uint8Array {
  const n = gt.length;
  const rgba = new Uint8Array(n * 4);
  const { mask, grey } = options;
  const alpha = grey === undefined ? 1 : OVERLAY_ALPHA;
  for (let i = 0; i < n; i++) {
    const g = grey === undefined ? 0 : grey[i]!;
    let colour: readonly number[] | undefined;
    if (mask === undefined || isForeground(mask, i)) {
      const a = isForeground(gt, i);
      const b = isForeground(pred, i);
      colour = a ? (b ? OVERLAY_COLOURS.truePositive : OVERLAY_COLOURS.falseNegative) : b ? OVERLAY_COLOURS.falsePositive : undefined;
    }
    const o = i * 4;
    for (let c = 0; c < 3; c++) rgba[o + c] = colour === undefined ? g : Math.round(alpha * colour[c]! + (1 - alpha) * g);
    rgba[o + 3] = 255;
  }
  return rgba;
}

/** Every `stride`-th pixel of every `stride`-th row (nearest neighbour: class colours stay exact). */
export function subsampleRgba(rgba: Uint8Array, width: number, height: number, stride: number): { rgba: Uint8Array; width: number; height: number } {
  if (stride === 1) return { rgba, width, height };
  const w = Math.ceil(width / stride);
  const h = Math.ceil(height / stride);
  const out = new Uint8Array(w * h * 4);
  const words = new Uint32Array(rgba.buffer, rgba.byteOffset, width * height);
  const outWords = new Uint32Array(out.buffer);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) outWords[y * w + x] = words[y * stride * width + x * stride]!;
  return { rgba: out, width: w, height: h };
}

export function encodePng(rgba: Uint8Array, width: number, height: number): Buffer {
  const png = new PNG({ width, height });
  png.data = Buffer.from(rgba.buffer, rgba.byteOffset, rgba.byteLength);
  // Colour type 2 (RGB): the alpha channel is always opaque, so dropping it saves a quarter.
  return PNG.sync.write(png, { colorType: 2 });
}

export interface OverlaySources {
  pred: VolumeSource;
  gt: VolumeSource;
  mask?: VolumeSource;
  image?: VolumeSource;
}

/** Reads slice z (relative to the volume's first slice) of every source and renders its overlay PNG. */
export async function renderOverlay(
  sources: OverlaySources,
  z: number,
  options: { scale?: number; signal?: AbortSignal; /** Longest side in pixels; larger slices are subsampled by a whole stride (default 1024). */ maxSidePx?: number } = {},
): Promise<{ png: Buffer; width: number; height: number; stride: number }> {
  const scale = options.scale ?? 0;
  const shape = sources.gt.metadata.scales[scale]!.shapeZyx;
  const read = (v: VolumeSource | undefined) => {
    if (v === undefined) return undefined;
    const level = v.metadata.scales[scale]!;
    return v.read({ offsetZyx: [level.offsetZyx[0] + z, level.offsetZyx[1], level.offsetZyx[2]] as Vec3, shapeZyx: [1, shape[1], shape[2]] }, scale, {
      signal: options.signal,
    });
  };
  const [gt, pred, mask, image] = await Promise.all([read(sources.gt), read(sources.pred), read(sources.mask), read(sources.image)]);
  const grey = image === undefined ? undefined : greyLevels(image, sources.image!.metadata.dtype === "uint8");
  const rgba = overlayRgba(gt!, pred!, { ...(mask === undefined ? {} : { mask }), ...(grey === undefined ? {} : { grey }) });
  const stride = Math.max(1, Math.ceil(Math.max(shape[1], shape[2]) / (options.maxSidePx ?? 1024)));
  const small = subsampleRgba(rgba, shape[2], shape[1], stride);
  return { png: encodePng(small.rgba, small.width, small.height), width: small.width, height: small.height, stride };
}

/** The image must cover the labels voxel for voxel: same shape at the scale, same voxel size. */
export function checkImage(image: VolumeSource, gt: VolumeSource, scale = 0): void {
  const a = image.metadata.scales[scale];
  const b = gt.metadata.scales[scale]!;
  if (a === undefined) throw invalidArgument("image", `has no scale level ${scale}`);
  if (!a.shapeZyx.every((n, i) => n === b.shapeZyx[i])) {
    throw invalidArgument("image", `shape ${a.shapeZyx.join("x")} does not match gt shape ${b.shapeZyx.join("x")}`);
  }
  if (!a.voxelSizeNm.every((v, i) => Math.abs(v - b.voxelSizeNm[i]!) <= 1e-6 * Math.max(v, b.voxelSizeNm[i]!))) {
    throw invalidArgument("image", `voxel size ${a.voxelSizeNm.join("x")} nm does not match gt voxel size ${b.voxelSizeNm.join("x")} nm`);
  }
}
