// The volumes the bridge serves, by id: each is opened once through openVolume (so the server's
// root allowlist applies) and kept open with the precomputed info it is exposed as.

import { createHash } from "node:crypto";
import { VOLUME_ID_PATTERN } from "#src/bridge_api.ts";
import { checkIntensityWindow, type IntensityWindow, intensityKey } from "#src/intensity.ts";
import { failedPrecondition, invalidArgument, notFound, resourceExhausted } from "#src/errors.ts";
import type { PrecomputedInfo } from "#src/volume/precomputed_info.ts";
import type { ReadOptions, Vec3, VolumeSource } from "#src/volume/types.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { exposedInfo } from "./precomputed_view.ts";

export interface VolumeSpec {
  url: string;
  /** Default: derived from the URL, so registering the same URL twice gives the same id. */
  id?: string;
  /** Layer name in the default viewer state; default the id. */
  name?: string;
  /** Data that changes while served (live results) is sent with `Cache-Control: no-store`. */
  mutable?: boolean;
  /** How the models see the image (src/intensity.ts); required for model layers unless uint8. */
  intensityWindow?: IntensityWindow;
}

export interface RegisteredVolume {
  id: string;
  url: string;
  name: string;
  mutable: boolean;
  source: VolumeSource;
  info: PrecomputedInfo;
  /** VolumeSpec.intensityWindow, checked. */
  intensity?: IntensityWindow;
  /**
   * Live volumes: a number that changes whenever the data changes. Meshes (mesh.ts) are cached
   * per (id, version, segment), so bumping it makes the next mesh request recompute. Absent: 0.
   */
  version?: () => number;
  /**
   * Optional index for meshes: the scale-0 chunk grid positions (zyx, as the bridge chunks the
   * volume) holding voxels of `segment`. Without it the bridge scans every chunk once per version.
   */
  segmentChunks?: (segment: bigint, options: ReadOptions) => Promise<Vec3[]>;
}

export interface VolumeRegistryOptions {
  roots: readonly string[];
  /** Most volumes held open at once (default 256). */
  maxVolumes?: number;
}

export class VolumeRegistry {
  readonly #volumes = new Map<string, RegisteredVolume>();
  readonly #pending = new Map<string, Promise<RegisteredVolume>>();
  readonly #roots: readonly string[];
  readonly #maxVolumes: number;

  constructor(options: VolumeRegistryOptions) {
    this.#roots = options.roots;
    this.#maxVolumes = options.maxVolumes ?? 256;
  }

  static idFor(url: string, intensity?: IntensityWindow): string {
    return `v${createHash("sha256").update(url + intensityKey(intensity)).digest("hex").slice(0, 12)}`;
  }

  /** Opens and registers `spec.url`; returns the existing entry when that id already names that URL. */
  async register(spec: VolumeSpec): Promise<RegisteredVolume> {
    if (typeof spec.url !== "string" || spec.url === "") throw invalidArgument("url", "expected a volume URL");
    if (spec.id !== undefined && (typeof spec.id !== "string" || !VOLUME_ID_PATTERN.test(spec.id))) {
      throw invalidArgument("id", `expected ${VOLUME_ID_PATTERN.source}, got ${JSON.stringify(spec.id)}`);
    }
    if (spec.name !== undefined && (typeof spec.name !== "string" || spec.name.length === 0 || spec.name.length > 200)) {
      throw invalidArgument("name", "expected a non-empty string of at most 200 characters");
    }
    const intensity = spec.intensityWindow === undefined ? undefined : checkIntensityWindow(spec.intensityWindow, "intensityWindow");
    const id = spec.id ?? VolumeRegistry.idFor(spec.url, intensity);
    const existing = this.#volumes.get(id) ?? (await this.#pending.get(id)?.catch(() => undefined));
    if (existing !== undefined) {
      if (existing.url !== spec.url) throw failedPrecondition(`id ${id} is already registered for another URL`, "id");
      if (intensityKey(existing.intensity) !== intensityKey(intensity)) throw failedPrecondition(`id ${id} is already registered with another intensity window`, "id");
      return existing;
    }
    if (this.#volumes.size + this.#pending.size >= this.#maxVolumes) {
      throw resourceExhausted(`at most ${this.#maxVolumes} volumes can be registered`, "url");
    }
    const opening = (async () => {
      const source = await openVolume(spec.url, { roots: this.#roots });
      try {
        const info = exposedInfo(source.metadata);
        return { id, url: spec.url, name: spec.name ?? id, mutable: spec.mutable ?? false, source, info, ...(intensity === undefined ? {} : { intensity }) };
      } catch (e) {
        await source.close();
        throw e;
      }
    })();
    this.#pending.set(id, opening);
    try {
      const volume = await opening;
      this.#volumes.set(id, volume);
      return volume;
    } finally {
      this.#pending.delete(id);
    }
  }

  /**
   * Registers a volume that is already open (a live layer the bridge itself computes); the
   * registry owns it from then on. FailedPrecondition naming `id` if the id is taken.
   */
  add(spec: { id: string; url: string; name?: string; mutable?: boolean; version?: () => number }, source: VolumeSource): RegisteredVolume {
    if (!VOLUME_ID_PATTERN.test(spec.id)) throw invalidArgument("id", `expected ${VOLUME_ID_PATTERN.source}, got ${JSON.stringify(spec.id)}`);
    if (this.#volumes.has(spec.id) || this.#pending.has(spec.id)) throw failedPrecondition(`id ${spec.id} is already registered`, "id");
    if (this.#volumes.size + this.#pending.size >= this.#maxVolumes) {
      throw resourceExhausted(`at most ${this.#maxVolumes} volumes can be registered`, "id");
    }
    const volume: RegisteredVolume = { id: spec.id, url: spec.url, name: spec.name ?? spec.id, mutable: spec.mutable ?? false, source, info: exposedInfo(source.metadata) };
    if (spec.version !== undefined) volume.version = spec.version;
    this.#volumes.set(spec.id, volume);
    return volume;
  }

  /** Unregisters and closes a volume (no-op for an unknown id). */
  async remove(id: string): Promise<void> {
    const v = this.#volumes.get(id);
    if (v === undefined) return;
    this.#volumes.delete(id);
    await v.source.close();
  }

  /** NotFound naming `id` when no volume has that id. */
  get(id: string): RegisteredVolume {
    const v = this.#volumes.get(id);
    if (v === undefined) throw notFound("id", `no volume ${JSON.stringify(id.slice(0, 100))} is registered`);
    return v;
  }

  list(): RegisteredVolume[] {
    return [...this.#volumes.values()];
  }

  async close(): Promise<void> {
    const all = [...this.#volumes.values()];
    this.#volumes.clear();
    await Promise.all(all.map((v) => v.source.close()));
  }
}
