// The Neuroglancer state a fresh viewer page opens: the bridge's start-up volumes as layers (by
// `spatialsam://<id>`, so the state does not depend on the host or port), centred on the first
// volume, in the 4-panel layout (xy, xz, yz cross sections + 3D). Segmentation layers select
// their segments, so the 3D panel shows their meshes; SDF companions follow their image, hidden.

import { SDF_SHADER } from "./sdf_layer.ts";
import type { RegisteredVolume } from "./volume_registry.ts";

export interface ViewerStateExtras {
  /** Segments shown (and meshed in 3D) per segmentation volume id; none listed shows all in 2D, none in 3D. */
  segments?: ReadonlyMap<string, readonly bigint[]>;
  /** SDF companions (sdf_layer.ts) by the id of their image volume. */
  sdf?: ReadonlyMap<string, RegisteredVolume>;
}

export function defaultViewerState(volumes: readonly RegisteredVolume[], extras: ViewerStateExtras = {}): Record<string, unknown> {
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
          // The 3D panel shows the whole volume (its height in voxels of the global dimensions),
          // tilted 30 degrees about x so meshes read as solids.
          projectionScale: 1.4 * Math.max(...[0, 1, 2].map((d) => (first.sizeXyz[d]! * first.resolutionXyz[d]!) / first.resolutionXyz[0]!)),
          projectionOrientation: [-Math.sin(Math.PI / 12), 0, 0, Math.cos(Math.PI / 12)],
        };
  return {
    ...view,
    layers: volumes.flatMap((v) => {
      const segments = extras.segments?.get(v.id) ?? [];
      const sdf = extras.sdf?.get(v.id);
      return [
        {
          type: v.info.type,
          source: `spatialsam://${v.id}`,
          name: v.name,
          ...(v.info.type === "segmentation" ? { selectedAlpha: 0.45 } : {}),
          // The contrast the models see (the default image shader's invlerp control).
          ...(v.intensity === undefined ? {} : { shaderControls: { normalized: { range: [v.intensity.low, v.intensity.high] } } }),
          ...(segments.length > 0 ? { segments: segments.map(String) } : {}),
        },
        ...(sdf === undefined ? [] : [{ type: "image", source: `spatialsam://${sdf.id}`, name: sdf.name, visible: false, opacity: 0.6, shader: SDF_SHADER }]),
      ];
    }),
    layout: "4panel",
    // The 3D panel shows meshes alone: the three sections drawn into it hide the meshes behind them.
    showSlices: false,
  };
}
