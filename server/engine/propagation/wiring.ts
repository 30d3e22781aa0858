// How serve() builds the propagation engine: the propagator folder's graphs in their own worker
// pool, the SDF engine and model registry for SDF memory, and result volumes opened inside the roots.
import type { Logger } from "#server/log.ts";
import type { SdfEngine } from "#server/engine/sdf_engine.ts";
import type { ModelRegistry, RegistryOptions } from "#server/onnx/model_registry.ts";
import { openVolume } from "#server/volume/open_volume.ts";
import { PropagationEngine } from "./engine.ts";
import { loadPropagator } from "./propagator.ts";

export interface PropagationServeOptions {
  /** A propagator folder: propagator.json and its three graph folders. */
  dir: string;
  /** The 3D U-Net whose SDF is the memory when a session names none. */
  defaultSdfModel?: string;
  maxSessions?: number;
  idleTimeoutMs?: number;
  maxSessionBytes?: number;
  embeddingCacheBytes?: number;
}

export async function startPropagation(
  options: PropagationServeOptions,
  deps: { registryOptions: RegistryOptions; registry: ModelRegistry; sdf: SdfEngine; roots: string[]; log: Logger },
): Promise<PropagationEngine> {
  const propagator = await loadPropagator(options.dir, deps.registryOptions);
  const { dir: _dir, defaultSdfModel, ...limits } = options;
  return new PropagationEngine({
    propagator,
    log: deps.log,
    sdf: { engine: deps.sdf, registry: deps.registry, ...(defaultSdfModel === undefined ? {} : { defaultModel: defaultSdfModel }) },
    openVolume: (url) => openVolume(url, { roots: deps.roots }),
    ...limits,
  });
}
