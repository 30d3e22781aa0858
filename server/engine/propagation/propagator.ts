// A propagator folder (propagator.json + its three ONNX graphs with manifests): the loop constants,
// validated field by field, and a ModelRegistry of its own that runs the three graphs in workers.
import { readFile } from "node:fs/promises";
import { join, resolve } from "node:path";
import { invalidArgument, notFound, SpatialSamError } from "#src/errors.ts";
import { ModelRegistry, type RegistryOptions } from "#server/onnx/model_registry.ts";

export const GRAPH_KINDS = ["image_encoder", "memory_encoder", "memory_decoder"] as const;
export type GraphKind = (typeof GRAPH_KINDS)[number];

/** propagator.json, typed: every number the loop uses, nothing it does not. */
export interface PropagatorConfig {
  name: string;
  version: string;
  /** "sdf": the memory encoder and decoder take the SDF slice; "mask": SAM2's mask-only memory. */
  memory: "sdf" | "mask";
  dim: number;
  memDim: number;
  numRecent: number;
  maxCond: number;
  maxPtrs: number;
  maskThreshold: number;
  noObjectLogit: number;
  /** Feature stride (the image encoder's output is H/stride x W/stride). */
  stride: number;
  /** Slices are padded bottom/right to multiples of this. */
  multipleOf: number;
  minHw: [number, number];
  normMean: number;
  normStd: number;
  /** Graph folder (relative to the propagator folder) of each kind, from `graphs`. */
  graphDirs: Record<GraphKind, string>;
}

type Json = Record<string, unknown>;

function obj(v: unknown, field: string): Json {
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw invalidArgument(field, "must be an object");
  return v as Json;
}

function num(o: Json, key: string, field: string, check: (x: number) => boolean = Number.isFinite, want = "a finite number"): number {
  const v = o[key];
  if (typeof v !== "number" || !check(v)) throw invalidArgument(`${field}${key}`, `must be ${want}, got ${JSON.stringify(v)}`);
  return v;
}

function str(o: Json, key: string, field: string): string {
  const v = o[key];
  if (typeof v !== "string" || v.length === 0) throw invalidArgument(`${field}${key}`, `must be a non-empty string, got ${JSON.stringify(v)}`);
  return v;
}

const posInt = (x: number) => Number.isInteger(x) && x >= 1;

/** Validates parsed propagator.json; errors name the field (`loop.max_cond`, `graphs.image_encoder`). */
export function parsePropagatorConfig(json: unknown): PropagatorConfig {
  const top = obj(json, "propagator.json");
  const memory = top.memory;
  if (memory !== "sdf" && memory !== "mask") throw invalidArgument("memory", `must be "sdf" or "mask", got ${JSON.stringify(memory)}`);
  const graphs = obj(top.graphs, "graphs");
  const graphDirs = {} as Record<GraphKind, string>;
  for (const kind of GRAPH_KINDS) {
    const path = str(graphs, kind, "graphs.");
    // The registry loads <dir>/*/model.json: each graph must be a model.json one folder down.
    const m = /^([^/\\.][^/\\]*)\/model\.json$/.exec(path);
    if (m === null) throw invalidArgument(`graphs.${kind}`, `must be "<folder>/model.json", got ${JSON.stringify(path)}`);
    graphDirs[kind] = m[1]!;
  }
  const loop = obj(top.loop, "loop");
  const image = obj(top.image, "image");
  const norm = obj(top.normalization, "normalization");
  const minHw = image.min_hw;
  if (!Array.isArray(minHw) || minHw.length !== 2 || !minHw.every((v) => typeof v === "number" && posInt(v))) {
    throw invalidArgument("image.min_hw", `must be two positive integers, got ${JSON.stringify(minHw)}`);
  }
  const config: PropagatorConfig = {
    name: str(top, "name", ""),
    version: str(top, "version", ""),
    memory,
    dim: num(top, "dim", "", posInt, "a positive integer"),
    memDim: num(top, "mem_dim", "", posInt, "a positive integer"),
    numRecent: num(loop, "num_recent", "loop.", (x) => Number.isInteger(x) && x >= 0, "an integer >= 0"),
    maxCond: num(loop, "max_cond", "loop.", posInt, "a positive integer"),
    maxPtrs: num(loop, "max_ptrs", "loop.", posInt, "a positive integer"),
    maskThreshold: num(loop, "mask_threshold", "loop."),
    noObjectLogit: num(loop, "no_object_logit", "loop."),
    stride: num(image, "stride", "image.", posInt, "a positive integer"),
    multipleOf: num(image, "multiple_of", "image.", posInt, "a positive integer"),
    minHw: [minHw[0] as number, minHw[1] as number],
    normMean: num(norm, "mean", "normalization."),
    normStd: num(norm, "std", "normalization.", (x) => Number.isFinite(x) && x > 0, "a positive number"),
    graphDirs,
  };
  if (config.multipleOf % 4 !== 0) throw invalidArgument("image.multiple_of", `must be a multiple of 4 (mask prompts are 4x4 averages), got ${config.multipleOf}`);
  if (config.multipleOf % config.stride !== 0) throw invalidArgument("image.multiple_of", `must be a multiple of image.stride ${config.stride}`);
  return config;
}

export interface LoadedPropagator {
  config: PropagatorConfig;
  dir: string;
  /** Runs the three graphs; owned by this propagator (close() closes it). */
  registry: ModelRegistry;
  /** The registry's model name of each graph. */
  graphs: Record<GraphKind, string>;
  close(): Promise<void>;
}

/** Reads <dir>/propagator.json and loads its three graphs (sha256 and graph checks as any model). */
export async function loadPropagator(dir: string, options: RegistryOptions): Promise<LoadedPropagator> {
  const root = resolve(dir);
  const path = join(root, "propagator.json");
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    throw notFound(path, `cannot read the propagator description (${(e as Error).message})`);
  }
  let config: PropagatorConfig;
  try {
    config = parsePropagatorConfig(JSON.parse(text));
  } catch (e) {
    if (e instanceof SyntaxError) throw invalidArgument(path, `not valid JSON (${e.message})`);
    if (e instanceof SpatialSamError && e._tag === "InvalidArgument") {
      throw invalidArgument(`${path}:${e.field ?? ""}`, e.field === undefined ? e.message : e.message.slice(e.field.length + 2));
    }
    throw e;
  }
  const registry = await ModelRegistry.load(root, options);
  try {
    const graphs = {} as Record<GraphKind, string>;
    for (const kind of GRAPH_KINDS) {
      const manifestPath = join(root, config.graphDirs[kind], "model.json");
      const loaded = registry.list().find((m) => resolve(m.manifestPath) === manifestPath);
      if (loaded === undefined) throw notFound(`${path}:graphs.${kind}`, `no model.json at ${manifestPath}`);
      if (loaded.manifest.kind !== kind) {
        throw invalidArgument(`${manifestPath}:kind`, `is ${JSON.stringify(loaded.manifest.kind)} but propagator.json lists it as graphs.${kind}`);
      }
      graphs[kind] = loaded.manifest.name;
    }
    const wantsSdf = registry.get(graphs.memory_decoder)!.manifest.inputs.some((i) => i.name === "sdf_slice");
    if (wantsSdf !== (config.memory === "sdf")) {
      throw invalidArgument(`${path}:memory`, `is ${config.memory} but the memory decoder ${wantsSdf ? "takes" : "does not take"} sdf_slice`);
    }
    return { config, dir: root, registry, graphs, close: () => registry.close() };
  } catch (e) {
    await registry.close();
    throw e;
  }
}
