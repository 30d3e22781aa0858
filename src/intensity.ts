// How raw image values become the 8-bit EM intensities the models were trained on. uint8 volumes
// are used as stored; any other type needs an intensity window, the raw values shown as black
// (`low`) and white (`high`), as in Neuroglancer's contrast range. A window maps
//   v -> floor(clip((v - low) / (high - low), 0, 1) * 255 + 0.5)   (NaN -> 0)
// which is what models/spatialsam/volume_io.py's to_uint8 computes, so a windowed uint16 volume
// gives the server exactly the input a Python run on the converted uint8 volume sees. Dividing
// uint16 by 65535 instead would hand the models near-black images for the many 16-bit files that
// hold 8- to 12-bit data.
import type { DataType } from "./dtype.ts";
import { invalidArgument } from "./errors.ts";

export interface IntensityWindow {
  low: number;
  high: number;
}

/** Validates a window from the wire or a file (`field` names it in errors). */
export function checkIntensityWindow(w: unknown, field = "intensity_window"): IntensityWindow {
  if (typeof w !== "object" || w === null) throw invalidArgument(field, `expected {low, high}, got ${JSON.stringify(w)}`);
  const { low, high } = w as Record<string, unknown>;
  if (typeof low !== "number" || !Number.isFinite(low)) throw invalidArgument(`${field}.low`, `expected a finite number, got ${JSON.stringify(low)}`);
  if (typeof high !== "number" || !Number.isFinite(high)) throw invalidArgument(`${field}.high`, `expected a finite number, got ${JSON.stringify(high)}`);
  if (!(high > low)) throw invalidArgument(field, `high (${high}) must be greater than low (${low})`);
  return { low, high };
}

/** Parses "LOW,HIGH" (a command-line flag). */
export function parseIntensityWindow(s: string, field = "--intensity-window"): IntensityWindow {
  const parts = s.split(",").map((p) => (p.trim() === "" ? Number.NaN : Number(p)));
  if (parts.length !== 2 || !parts.every(Number.isFinite)) throw invalidArgument(field, `expected LOW,HIGH (two finite numbers), got ${JSON.stringify(s)}`);
  return checkIntensityWindow({ low: parts[0], high: parts[1] }, field);
}

/** A suffix for cache keys: results computed under different windows must never be shared. */
export function intensityKey(w: IntensityWindow | undefined): string {
  return w === undefined ? "" : `|window=${w.low},${w.high}`;
}

const asStored = (v: number): number => v;

/**
 * The map raw value -> model intensity (an integer in 0..255) for a volume of `dtype`. Throws an
 * error naming `field` when the volume is not uint8 and no window is given.
 */
export function modelIntensity(dtype: DataType, window: IntensityWindow | undefined, field = "intensity_window"): (v: number) => number {
  if (window === undefined) {
    if (dtype === "uint8") return asStored;
    throw invalidArgument(
      field,
      `the volume is ${dtype} and the models take 8-bit EM intensities: open it with an intensity window (low, high), ` +
        "the raw values shown as black and white (e.g. the contrast range you use in Neuroglancer)",
    );
  }
  const { low, high } = checkIntensityWindow(window, field);
  const span = high - low;
  return (v) => {
    const t = (v - low) / span; // the same float64 operations as numpy's, so both round alike
    return t >= 1 ? 255 : t > 0 ? Math.floor(t * 255 + 0.5) : 0; // NaN fails both tests: 0
  };
}

/** A slice or block read from a volume, as model intensities (uint8 volumes without a window pass as read). */
export function modelImage(raw: ArrayLike<number | bigint>, toModel: (v: number) => number): ArrayLike<number> {
  const src = raw as ArrayLike<number>;
  return toModel === asStored ? src : Float32Array.from(src, toModel);
}
