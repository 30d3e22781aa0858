// The Neuroglancer state a fresh viewer page opens: the bridge's start-up volumes as layers (by
// `spatialsam://<id>`, so the state does not depend on the host or port), centred on the first
// volume, in the 4-panel layout (xy, xz, yz cross sections + 3D).

import type { RegisteredVolume } from "./volume_registry.ts";

export function defaultViewerState(volumes: readonly RegisteredVolume[]): Record<string, unknown> {
  const first = volumes[0]?.info.scales[0];
  const view =
    first === undefined
      ? {}
      : {
          // Global coordinates in the first volume's voxels (Neuroglancer wants metres).
          dimensions: {
            x: [first.resolutionXyz[0] * 1e-9, "m"],
            y: [first.resolutionXyz[1] * 1e-9, "m"],
            z: [first.resolutionXyz[2] * 1e-9, "m"],
          },
          position: [0, 1, 2].map((d) => first.voxelOffsetXyz[d]! + first.sizeXyz[d]! / 2),
        };
  return {
    ...view,
    layers: volumes.map((v) => ({
      type: v.info.type,
      source: `spatialsam://${v.id}`,
      name: v.name,
      ...(v.info.type === "segmentation" ? { selectedAlpha: 0.45 } : {}),
    })),
    layout: "4panel",
  };
}
