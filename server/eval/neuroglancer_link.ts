// The report's Neuroglancer link: prediction and ground truth side by side (two xy panels, linked
// position, the EM image under both when given), as a `#!{json state}` URL. Volumes that are not
// already served as precomputed over HTTP are served by the bridge of `spatial-sam serve`, under the
// id the bridge derives from their URL, so the link works once they are registered there.

import { volumePath, VOLUMES_API_PATH } from "#src/bridge_api.ts";
import type { Vec3 } from "#src/volume/types.ts";
import { VolumeRegistry } from "#server/bridge/volume_registry.ts";

export interface LinkVolume {
  role: "prediction" | "ground truth" | "image";
  url: string;
}

export interface NeuroglancerLink {
  url: string;
  state: Record<string, unknown>;
  /** Volumes the bridge must serve for the link to work: the POST body for each. */
  registrations: { role: LinkVolume["role"]; id: string; url: string }[];
  /** Shell commands that serve them (empty when every volume is already on HTTP). */
  steps: string[];
}

export interface LinkOptions {
  /** The bridge (viewer page and volumes), default http://127.0.0.1:8080/. */
  bridgeUrl: string;
  voxelSizeNm: Vec3;
  shapeZyx: Vec3;
  offsetZyx: Vec3;
  /** Slice to open at (relative to the first slice). */
  z: number;
}

const shellQuote = (s: string) => `'${s.replace(/'/g, "'\\''")}'`;

/** A precomputed source already reachable over HTTP needs no bridge. */
function directSource(url: string): string | undefined {
  return /^precomputed:\/\/https?:\/\//.test(url) ? url : undefined;
}

export function neuroglancerLink(volumes: readonly LinkVolume[], o: LinkOptions): NeuroglancerLink {
  const bridge = o.bridgeUrl.endsWith("/") ? o.bridgeUrl : `${o.bridgeUrl}/`;
  const registrations: NeuroglancerLink["registrations"] = [];
  const layers = volumes.map((v) => {
    let source = directSource(v.url);
    if (source === undefined) {
      const id = VolumeRegistry.idFor(v.url);
      registrations.push({ role: v.role, id, url: v.url });
      source = `precomputed://${bridge}${volumePath(id)}`;
    }
    return v.role === "image"
      ? { type: "image", source, name: v.role }
      : { type: "segmentation", source, name: v.role, selectedAlpha: 0.5 };
  });
  const under = volumes.some((v) => v.role === "image") ? ["image"] : [];
  const [vz, vy, vx] = o.voxelSizeNm;
  const state = {
    // Global coordinates in the volumes' voxels (Neuroglancer wants metres), centred on slice z.
    dimensions: { x: [vx * 1e-9, "m"], y: [vy * 1e-9, "m"], z: [vz * 1e-9, "m"] },
    position: [o.offsetZyx[2] + o.shapeZyx[2] / 2, o.offsetZyx[1] + o.shapeZyx[1] / 2, o.offsetZyx[0] + o.z + 0.5],
    // Zoomed so a whole slice fits a panel of about 450 screen pixels (in the finest unit per pixel).
    crossSectionScale: Math.max(o.shapeZyx[2] * vx, o.shapeZyx[1] * vy) / Math.min(vx, vy, vz) / 450,
    layers,
    layout: {
      type: "row",
      children: [
        { type: "viewer", layers: [...under, "prediction"], layout: "xy" },
        { type: "viewer", layers: [...under, "ground truth"], layout: "xy" },
      ],
    },
  };
  const steps =
    registrations.length === 0
      ? []
      : [
          `spatial-sam serve --http-port ${new URL(bridge).port || "80"} --roots <folder holding the volumes>`,
          ...registrations.map(
            (r) =>
              `curl -X POST ${bridge}${VOLUMES_API_PATH} -H 'content-type: application/json' -d ${shellQuote(JSON.stringify({ url: r.url, id: r.id, name: r.role }))}`,
          ),
        ];
  return { url: `${bridge}#!${encodeURIComponent(JSON.stringify(state))}`, state, registrations, steps };
}
