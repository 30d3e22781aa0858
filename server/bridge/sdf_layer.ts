// The SDF as a viewport-driven image layer: each image volume `<id>` of the bridge gets a
// companion float32 volume `<id>-sdf` whose chunks are computed by the SdfEngine when a viewer asks
// for them. Nothing is computed up front; one chunk is one SDF block, so a chunk request runs the
// U-Net on exactly that block (with its context), and a second request is an engine cache hit.

import type { TypedArray } from "#src/dtype.ts";
import { VOLUME_ID_PATTERN } from "#src/bridge_api.ts";
import { invalidArgument } from "#src/errors.ts";
import { modelIntensity } from "#src/intensity.ts";
import type { Box3, ReadOptions, VolumeMetadata, VolumeSource } from "#src/volume/types.ts";
import type { SdfEngine } from "#server/engine/sdf_engine.ts";
import type { Logger } from "#server/log.ts";
import type { ModelRegistry } from "#server/onnx/model_registry.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import type { RegisteredVolume, VolumeRegistry } from "./volume_registry.ts";

export const SDF_ID_SUFFIX = "-sdf";

export interface SdfLayerOptions {
  engine: SdfEngine;
  /** Where the model's manifest (block shape) is looked up. */
  registry: ModelRegistry;
  /** The 3D U-Net ("sdf_unet3d" manifest) whose SDF is shown. */
  model: string;
}

export interface SdfLayerStats {
  /** Chunk reads of companion volumes. */
  reads: number;
  /** SDF blocks those reads needed that the engine computed, and that it found cached. */
  blocksComputed: number;
  blocksCached: number;
}

/** Reads of `<id>-sdf`: the SdfEngine's result for the box, computed (or found cached) first. */
class SdfVolumeSource implements VolumeSource {
  #result: Promise<VolumeSource> | undefined;

  constructor(
    readonly metadata: VolumeMetadata,
    private readonly image: RegisteredVolume,
    private readonly layer: SdfLayer,
  ) {}

  async read(box: Box3, scale: number, options: ReadOptions = {}): Promise<TypedArray> {
    if (scale !== 0) throw invalidArgument("scale", `the SDF layer has only scale 0, not ${scale}`);
    const done = await this.layer.options.engine.compute({
      volume: this.image.source,
      volumeKey: this.image.url,
      ...(this.image.intensity === undefined ? {} : { intensity: this.image.intensity }),
      box,
      scale: 0,
      model: this.layer.options.model,
      ...(options.signal === undefined ? {} : { signal: options.signal }),
    });
    this.layer.count(done.blocksTotal - done.blocksCached, done.blocksCached);
    // The engine's cache is itself a precomputed volume, opened once (reads go through the chunk cache).
    if (this.#result === undefined) {
      const opening = openVolume(done.resultUrl, { roots: [done.dir] });
      this.#result = opening;
      opening.catch(() => {
        if (this.#result === opening) this.#result = undefined;
      });
    }
    return (await this.#result).read(box, 0, options);
  }

  async close(): Promise<void> {
    const result = this.#result;
    this.#result = undefined;
    await (await result?.catch(() => undefined))?.close();
  }
}

export class SdfLayer {
  readonly #stats: SdfLayerStats = { reads: 0, blocksComputed: 0, blocksCached: 0 };

  constructor(readonly options: SdfLayerOptions) {}

  get stats(): SdfLayerStats {
    return { ...this.#stats };
  }

  /** @internal Called by the companion sources after each engine request. */
  count(computed: number, cached: number): void {
    this.#stats.reads++;
    this.#stats.blocksComputed += computed;
    this.#stats.blocksCached += cached;
  }

  /**
   * Registers `<id>-sdf` for an image volume and returns it; undefined (logged) for volumes that
   * get none: segmentations, ids too long for the suffix, a missing model, an id already taken.
   */
  attach(volumes: VolumeRegistry, image: RegisteredVolume, log: Logger): RegisteredVolume | undefined {
    if (image.info.type !== "image") return undefined;
    const id = `${image.id}${SDF_ID_SUFFIX}`;
    const manifest = this.options.registry.get(this.options.model)?.manifest;
    const skip = (reason: string) => {
      log.warn({ volume: image.id, model: this.options.model, reason }, "no SDF layer for this volume");
      return undefined;
    };
    if (manifest === undefined) return skip("model not loaded");
    if (!VOLUME_ID_PATTERN.test(id)) return skip(`${id} is not a valid volume id`);
    try {
      modelIntensity(image.source.metadata.dtype, image.intensity, "intensityWindow"); // the engine's own rule: uint8 or a window
    } catch (e) {
      return skip((e as Error).message);
    }
    const level = image.source.metadata.scales[0]!;
    // One chunk per SDF block: the engine's block grid starts at the level's offset too.
    const metadata: VolumeMetadata = {
      format: "sdf",
      dtype: "float32",
      kind: "image",
      fillValue: 0,
      scales: [{ ...level, index: 0, key: "sdf", chunkShapeZyx: this.options.engine.blockShape(manifest) }],
    };
    try {
      return volumes.add(
        { id, url: `${image.url}#sdf=${this.options.model}`, name: `${image.name} SDF`, mutable: image.mutable },
        new SdfVolumeSource(metadata, image, this),
      );
    } catch (e) {
      return skip((e as Error).message);
    }
  }
}

/**
 * A diverging colour map for the SDF (model output in [-1, 1], positive inside: clip(d / T, -1, 1)):
 * blue outside, white on the boundary, red inside.
 */
export const SDF_SHADER = `#uicontrol invlerp sdf(range=[-1, 1], clamp=true)
void main() {
  float t = sdf();
  vec3 outside = vec3(0.23, 0.30, 0.75);
  vec3 boundary = vec3(0.87, 0.87, 0.87);
  vec3 inside = vec3(0.71, 0.02, 0.15);
  emitRGB(t < 0.5 ? mix(outside, boundary, 2.0 * t) : mix(boundary, inside, 2.0 * t - 1.0));
}
`;
