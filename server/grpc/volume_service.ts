// VolumeService: opens volumes by URL (through the injected opener, which enforces the root
// allowlist) and streams regions as storage-chunk-aligned pieces, so no message holds more than a
// chunk row and the client can start using data before the whole box is read.
import { randomUUID } from "node:crypto";
import type { VolumeServiceServer } from "#proto/spatial_sam/v1/volume.ts";
import type { OpenVolumeResponse, ReadRegionResponse, VolumeInfo } from "#proto/spatial_sam/v1/volume.ts";
import { checkIntensityWindow, type IntensityWindow } from "#src/intensity.ts";
import { invalidArgument, notFound, resourceExhausted, throwIfAborted } from "#src/errors.ts";
import type { Box3, VolumeSource } from "#src/volume/types.ts";
import type { Logger } from "#server/log.ts";
import { serverStreaming, unary } from "#server/grpc/handlers.ts";
import { fromWireBox, toWireBox, toWireDataType, toWireTensor } from "#server/grpc/convert.ts";

export type VolumeOpener = (url: string, options: { signal?: AbortSignal }) => Promise<VolumeSource>;

export interface VolumeServiceOptions {
  open: VolumeOpener;
  /** Most volumes open at once; OpenVolume beyond it is RESOURCE_EXHAUSTED. */
  maxOpenVolumes: number;
  /** Most voxels one ReadRegion may ask for. */
  maxRegionVoxels: number;
}

interface OpenedVolume {
  url: string;
  source: VolumeSource;
  /** How the models see it (OpenVolume's intensity_window); undefined: as stored. */
  intensity?: IntensityWindow;
}

export class VolumeRegistry {
  private readonly volumes = new Map<string, OpenedVolume>();
  constructor(private readonly options: VolumeServiceOptions) {}

  async open(url: string, signal?: AbortSignal, intensity?: IntensityWindow): Promise<OpenedVolume & { id: string }> {
    if (typeof url !== "string" || url.length === 0) throw invalidArgument("url", "is required");
    if (url.length > 4096) throw invalidArgument("url", "is longer than 4096 characters");
    if (intensity !== undefined) checkIntensityWindow(intensity);
    if (this.volumes.size >= this.options.maxOpenVolumes) {
      throw resourceExhausted(`${this.volumes.size} volumes are open; close one first`, "volume_id");
    }
    const source = await this.options.open(url, signal ? { signal } : {});
    const id = randomUUID();
    const opened: OpenedVolume = intensity === undefined ? { url, source } : { url, source, intensity };
    this.volumes.set(id, opened);
    return { id, ...opened };
  }

  get(id: string): OpenedVolume {
    const v = this.volumes.get(id);
    if (v === undefined) throw notFound("volume_id", `no open volume "${id}"`);
    return v;
  }

  async close(id: string): Promise<void> {
    const v = this.get(id);
    this.volumes.delete(id);
    await v.source.close();
  }

  async closeAll(): Promise<void> {
    const all = [...this.volumes.values()];
    this.volumes.clear();
    await Promise.allSettled(all.map((v) => v.source.close()));
  }

  get maxRegionVoxels(): number {
    return this.options.maxRegionVoxels;
  }
}

export function volumeInfo(id: string, url: string, source: VolumeSource, intensity?: IntensityWindow): VolumeInfo {
  const m = source.metadata;
  return {
    volumeId: id,
    url,
    dtype: toWireDataType(m.dtype),
    format: m.format,
    intensityWindow: intensity === undefined ? undefined : { ...intensity },
    scales: m.scales.map((s) => ({
      index: s.index,
      key: s.key,
      shape: { z: s.shapeZyx[0], y: s.shapeZyx[1], x: s.shapeZyx[2] },
      voxelSizeNm: { z: s.voxelSizeNm[0], y: s.voxelSizeNm[1], x: s.voxelSizeNm[2] },
      chunkShape: { z: s.chunkShapeZyx[0], y: s.chunkShapeZyx[1], x: s.chunkShapeZyx[2] },
      offset: { z: s.offsetZyx[0], y: s.offsetZyx[1], x: s.offsetZyx[2] },
    })),
  };
}

/** Splits `box` at the level's chunk boundaries (grid anchored at the level's offset), z-major. */
export function* chunkAlignedPieces(box: Box3, chunkShapeZyx: Box3["shapeZyx"], gridOffsetZyx: Box3["offsetZyx"]): Generator<Box3> {
  const starts = [0, 1, 2].map((a) => {
    const out: number[] = [];
    const lo = box.offsetZyx[a]!;
    const hi = lo + box.shapeZyx[a]!;
    const c = chunkShapeZyx[a]!;
    const g = gridOffsetZyx[a]!;
    let p = lo;
    while (p < hi) {
      out.push(p);
      p = g + (Math.floor((p - g) / c) + 1) * c;
    }
    out.push(hi);
    return out;
  });
  const [zs, ys, xs] = starts as [number[], number[], number[]];
  for (let i = 0; i + 1 < zs.length; i++)
    for (let j = 0; j + 1 < ys.length; j++)
      for (let k = 0; k + 1 < xs.length; k++)
        yield {
          offsetZyx: [zs[i]!, ys[j]!, xs[k]!],
          shapeZyx: [zs[i + 1]! - zs[i]!, ys[j + 1]! - ys[j]!, xs[k + 1]! - xs[k]!],
        };
}

export function volumeService(volumes: VolumeRegistry, log: Logger): VolumeServiceServer {
  return {
    openVolume: unary("OpenVolume", log, async (req, ctx): Promise<OpenVolumeResponse> => {
      const { id, url, source, intensity } = await volumes.open(req.url, ctx.signal, req.intensityWindow);
      return { volume: volumeInfo(id, url, source, intensity) };
    }),
    readRegion: serverStreaming("ReadRegion", log, async function* (req, ctx): AsyncGenerator<ReadRegionResponse> {
      const { source } = volumes.get(req.volumeId);
      const level = source.metadata.scales[req.scale];
      if (level === undefined) {
        throw invalidArgument("scale", `volume has ${source.metadata.scales.length} scales; ${req.scale} does not exist`);
      }
      const box = fromWireBox(req.box, "box");
      const voxels = box.shapeZyx.reduce((a, b) => a * b, 1);
      if (voxels > volumes.maxRegionVoxels) {
        throw invalidArgument("box.shape", `${voxels} voxels exceeds the limit of ${volumes.maxRegionVoxels} per ReadRegion`);
      }
      for (const piece of chunkAlignedPieces(box, level.chunkShapeZyx, level.offsetZyx)) {
        throwIfAborted(ctx.signal);
        const data = await source.read(piece, req.scale, { signal: ctx.signal });
        yield { box: toWireBox(piece), data: toWireTensor({ dtype: source.metadata.dtype, dims: piece.shapeZyx, data }) };
      }
    }),
    closeVolume: unary("CloseVolume", log, async (req) => {
      await volumes.close(req.volumeId);
      return {};
    }),
  };
}
