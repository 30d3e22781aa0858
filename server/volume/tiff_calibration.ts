// Voxel size of a TIFF from the metadata microscopy software writes: OME-XML PhysicalSize*,
// ImageJ's description (unit, spacing) with X/YResolution, or X/YResolution in pixels per cm.
//
// Precedence: OME-XML, then ImageJ, then ResolutionUnit = centimetre. Resolution in pixels per inch
// is ignored: it is the print DPI that image software writes by default (72, 300), never an EM
// calibration. A missing z size (a single page, no ImageJ `spacing`) is taken equal to x (the
// isotropic guess, stated here because nothing in the file says otherwise).

import type { Vec3 } from "#src/volume/types.ts";

/** The tags calibration is read from; resolutions are TIFF RATIONALs ([numerator, denominator]). */
export interface CalibrationTags {
  description?: string | undefined;
  xResolution?: ArrayLike<number> | number | undefined;
  yResolution?: ArrayLike<number> | number | undefined;
  /** 1 = none (ImageJ writes this and puts the unit in the description), 2 = inch, 3 = centimetre. */
  resolutionUnit?: number | undefined;
}

/** Nanometres per unit for the unit names ImageJ, OME and tifffile write. */
const NM_PER_UNIT: Record<string, number> = {
  pm: 1e-3,
  "å": 0.1,
  angstrom: 0.1,
  nm: 1,
  nanometer: 1,
  nanometers: 1,
  nanometre: 1,
  um: 1e3,
  "µm": 1e3,
  "μm": 1e3,
  micron: 1e3,
  microns: 1e3,
  micrometer: 1e3,
  micrometers: 1e3,
  micrometre: 1e3,
  mm: 1e6,
  millimeter: 1e6,
  cm: 1e7,
  m: 1e9,
};

export function nmPerUnit(unit: string): number | undefined {
  // ImageJ escapes non-ASCII in its description ("\u00B5m").
  const u = unit.trim().replace(/\\u00b5/gi, "µ").toLowerCase();
  return NM_PER_UNIT[u];
}

function rational(v: ArrayLike<number> | number | undefined): number | undefined {
  if (v === undefined) return undefined;
  const r = typeof v === "number" ? v : v.length >= 2 && v[1] !== 0 ? v[0]! / v[1]! : v.length === 1 ? v[0] : undefined;
  return r !== undefined && Number.isFinite(r) && r > 0 ? r : undefined;
}

/** ImageJ's description is `key=value` lines starting with `ImageJ=`. */
export function parseImageJDescription(description: string | undefined): Map<string, string> | undefined {
  if (description === undefined || !description.startsWith("ImageJ=")) return undefined;
  const out = new Map<string, string>();
  for (const line of description.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0) out.set(line.slice(0, eq).trim(), line.slice(eq + 1).trim());
  }
  return out;
}

function omeVoxelSize(description: string): Vec3 | undefined {
  const pixels = /<(?:\w+:)?Pixels\b([^>]*)>/.exec(description);
  if (pixels === null) return undefined;
  const attrs = pixels[1]!;
  const size = (axis: string): number | undefined => {
    const v = new RegExp(`\\bPhysicalSize${axis}="([^"]*)"`).exec(attrs);
    if (v === null) return undefined;
    // The OME schema's default unit is the micrometre.
    const unit = new RegExp(`\\bPhysicalSize${axis}Unit="([^"]*)"`).exec(attrs)?.[1] ?? "µm";
    const factor = nmPerUnit(unit);
    const n = Number(v[1]);
    return factor !== undefined && Number.isFinite(n) && n > 0 ? n * factor : undefined;
  };
  const x = size("X");
  const y = size("Y");
  if (x === undefined || y === undefined) return undefined;
  return [size("Z") ?? x, y, x];
}

/** Voxel size (z, y, x in nm) the tags state, or undefined when the file is uncalibrated. */
export function tiffVoxelSizeNm(tags: CalibrationTags): Vec3 | undefined {
  const description = tags.description;
  if (description !== undefined && description.includes("<OME")) {
    const ome = omeVoxelSize(description);
    if (ome !== undefined) return ome;
  }
  const xRes = rational(tags.xResolution);
  const yRes = rational(tags.yResolution) ?? xRes;
  const imagej = parseImageJDescription(description);
  const unit = imagej?.get("unit");
  if (unit !== undefined) {
    const factor = nmPerUnit(unit);
    if (factor === undefined || xRes === undefined || yRes === undefined) return undefined;
    const x = factor / xRes;
    const spacing = Number(imagej?.get("spacing"));
    return [Number.isFinite(spacing) && spacing > 0 ? spacing * factor : x, factor / yRes, x];
  }
  if (tags.resolutionUnit === 3 && xRes !== undefined && yRes !== undefined) {
    const x = 1e7 / xRes;
    return [x, 1e7 / yRes, x];
  }
  return undefined;
}
