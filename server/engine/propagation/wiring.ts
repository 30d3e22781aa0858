// How serve() builds the propagation engine: the propagator folder's graphs in their own worker
// pool, the SDF engine and model registry for SDF memory, and result volumes opened inside the roots.
import type { Logger } from "#server/log.ts";
import type { SdfEngine } from "#server/engine/sdf_engine.ts";
import type { ModelRegistry, RegistryOptions } from "#server/onnx/model_registry.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { PropagationEngine } from "./engine.ts";
import { loadPropagator, type LoadedPropagator } from "./propagator.ts";

export interface PropagationServeOptions {
  /** A propagator folder: propagator.json and its three graph folders; the default propagator. */
  dir: string;
  /** More propagator folders, each selectable by its `propagator.json` name (StartSession's `model`). */
  extraDirs?: string[];
  /** The 3D U-Net whose SDF is the memory when a session names none. */
  defaultSdfModel?: string;
  maxSessions?: number;
  idleTimeoutMs?: number;
  maxSessionBytes?: number;
  embeddingCacheBytes?: number;
  /** Speculative embedding around start and prompted slices (PropagationEngineOptions.prefetchRadius). */
  prefetchRadius?: number;
  readAhead?: boolean;
}

export async function startPropagation(
  options: PropagationServeOptions,
  deps: { registryOptions: RegistryOptions; registry: ModelRegistry; sdf: SdfEngine; roots: string[]; log: Logger },
): Promise<PropagationEngine> {
  const { dir, extraDirs = [], defaultSdfModel, ...limits } = options;
  // Each propagator has its own worker pool; if one fails to load, the ones loaded are closed.
  const loaded = await Promise.allSettled([dir, ...extraDirs].map((d) => loadPropagator(d, deps.registryOptions)));
  const failed = loaded.find((r) => r.status === "rejected");
  const ok = loaded.flatMap((r) => (r.status === "fulfilled" ? [r.value] : []));
  const close = () => Promise.allSettled(ok.map((p) => p.close()));
  if (failed !== undefined) {
    await close();
    throw failed.reason;
  }
  const [propagator, ...more] = ok as [LoadedPropagator, ...LoadedPropagator[]];
  let engine: PropagationEngine;
  try {
    engine = new PropagationEngine({
      propagator,
      more,
      log: deps.log,
      sdf: { engine: deps.sdf, registry: deps.registry, ...(defaultSdfModel === undefined ? {} : { defaultModel: defaultSdfModel }) },
      openVolume: (url) => openVolume(url, { roots: deps.roots }),
      ...limits,
    });
  } catch (e) {
    await close();
    throw e;
  }
  return engine;
}
