// Options of the commands that run models over a volume on this machine (sdf, segment).
import { InvalidArgumentError, Option } from "commander";
import { type IntensityWindow, parseIntensityWindow } from "#src/intensity.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";

export function parseBox(value: string): Box3 {
  const m = /^(\d+),(\d+),(\d+):(\d+),(\d+),(\d+)$/.exec(value.replace(/\s/g, ""));
  if (m === null) throw new InvalidArgumentError("expected z,y,x:depth,height,width (offset:shape, in voxels)");
  const n = m.slice(1).map(Number);
  return { offsetZyx: n.slice(0, 3) as Vec3, shapeZyx: n.slice(3) as Vec3 };
}

/** --intensity-window low,high (see src/intensity.ts); required for volumes that are not uint8. */
export function intensityWindowOption(): Option {
  return new Option("--intensity-window <low,high>", "raw values shown as black and white (required unless the volume is uint8)").argParser(
    (v): IntensityWindow => {
      try {
        return parseIntensityWindow(v);
      } catch (e) {
        throw new InvalidArgumentError((e as Error).message);
      }
    },
  );
}
