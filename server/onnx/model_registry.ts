// The models the server serves: every <modelsDir>/*/model.json, checked against its ONNX file
// (sha256) and against the graph onnxruntime reports (names, dtypes, ranks), run in worker threads.

import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, readFile } from "node:fs/promises";
import { availableParallelism } from "node:os";
import { join, resolve } from "node:path";
import type { Logger } from "pino";
import { DATA_TYPES, type DataType, type TypedArray } from "#src/dtype.ts";
import { dataCorruption, invalidArgument, notFound, SpatialSamError, throwIfAborted } from "#src/errors.ts";
import { parseManifest, type ModelManifest, type TensorSpec } from "#src/manifest.ts";
import type { ExecutionProvider, GraphInfo, TestFault, ValueInfo, WireTensor } from "./messages.ts";
import { WorkerPool, type PoolStats } from "./worker_pool.ts";

/** A dense C-order tensor: `data` holds product(dims) elements of `dtype`. */
export interface TensorData {
  dtype: DataType;
  dims: number[];
  data: TypedArray;
}

export interface RegistryOptions {
  logger: Logger;
  /** Worker threads; each loads every model. Default 1. */
  workers?: number;
  /** onnxruntime intra-op threads per worker. Default: the cores divided among the workers. */
  intraOpThreads?: number;
  /** Default "cpu". "cuda" falls back to cpu, with a warning in the log, when it cannot load. */
  executionProvider?: ExecutionProvider;
  /** Requests per model that may wait for a busy pool; one more is rejected ResourceExhausted. Default 16. */
  maxQueuePerModel?: number;
  /** Requests one client may have waiting per model; one more is rejected ResourceExhausted. Default maxQueuePerModel. */
  maxQueuePerClient?: number;
  /** Waiting requests are served clients in turn (default true) or oldest first (false). See worker_pool.ts. */
  fairShare?: boolean;
  /** Enables armFaultForTest. Tests only. */
  allowTestFaults?: boolean;
}

export interface LoadedModel {
  manifest: ModelManifest;
  /** model.json exactly as read from disk. */
  manifestJson: string;
  manifestPath: string;
  onnxPath: string;
  /** Where this model's sessions run: the requested provider, or cpu after a fallback. */
  executionProvider: ExecutionProvider;
}

export interface RunOptions {
  signal?: AbortSignal;
  /** Who the run is for: waiting runs are served clients in turn. "" (the default) is one anonymous client. */
  client?: string;
  /** Speculative: runs only when nothing else waits (see PoolRunOptions.background). */
  background?: boolean;
  /** Called when a worker takes the run. */
  onStart?: () => void;
}

function positiveInt(field: string, v: number, min: number): number {
  if (!Number.isInteger(v) || v < min) throw invalidArgument(field, `must be an integer >= ${min}, got ${v}`);
  return v;
}

/** Runs `fn`, prefixing the field of an InvalidArgument it throws with the file it is about. */
function inFile<T>(path: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof SpatialSamError && e._tag === "InvalidArgument") {
      const bare = e.field === undefined ? e.message : e.message.slice(e.field.length + 2);
      throw invalidArgument(e.field === undefined ? path : `${path}:${e.field}`, bare, e.cause);
    }
    throw e;
  }
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest("hex");
}

const isMissing = (e: unknown) => {
  const code = (e as NodeJS.ErrnoException).code;
  return code === "ENOENT" || code === "ENOTDIR";
};

/** Throws InvalidArgument naming the manifest field that disagrees with what the graph reports. */
function checkAgainstGraph(which: "inputs" | "outputs", specs: TensorSpec[], values: ValueInfo[]): void {
  const names = values.map((v) => v.name).join(", ");
  specs.forEach((spec, i) => {
    const v = values.find((x) => x.name === spec.name);
    if (v === undefined) throw invalidArgument(`${which}[${i}].name`, `the ONNX graph has no ${which.slice(0, -1)} ${JSON.stringify(spec.name)} (it has: ${names})`);
    if (v.type !== spec.dtype) throw invalidArgument(`${which}[${i}].dtype`, `is ${spec.dtype} but the graph's ${spec.name} is ${v.type ?? "not a tensor"}`);
    // An empty shape means the graph does not say; then only a run can tell.
    if (v.shape.length === 0) return;
    if (v.shape.length !== spec.shape.length) {
      throw invalidArgument(`${which}[${i}].shape`, `has ${spec.shape.length} dimensions but the graph's ${spec.name} has ${v.shape.length}`);
    }
    v.shape.forEach((g, d) => {
      // A size the graph fixes must be fixed to the same value here (a dynamic manifest dim would promise too much).
      if (typeof g === "number" && g >= 0 && spec.shape[d] !== g) {
        throw invalidArgument(`${which}[${i}].shape[${d}]`, `is ${JSON.stringify(spec.shape[d])} but the graph fixes it to ${g}`);
      }
    });
  });
  for (const v of values) {
    if (!specs.some((s) => s.name === v.name)) throw invalidArgument(which, `the ONNX graph's ${which.slice(0, -1)} ${JSON.stringify(v.name)} is missing`);
  }
}

/** Checks caller tensors against the manifest and copies them into buffers the pool may transfer. */
function toWireInputs(manifest: ModelManifest, inputs: Record<string, TensorData>): Record<string, WireTensor> {
  const declared = manifest.inputs.map((s) => s.name);
  for (const name of Object.keys(inputs)) {
    if (!declared.includes(name)) {
      throw invalidArgument(`inputs.${name}`, `model ${manifest.name} has no such input (its inputs: ${declared.join(", ")})`);
    }
  }
  const symbols = new Map<string, { size: number; where: string }>();
  const wire: Record<string, WireTensor> = {};
  for (const spec of manifest.inputs) {
    const field = `inputs.${spec.name}`;
    const t = inputs[spec.name];
    if (t === undefined) throw invalidArgument(field, `is required by model ${manifest.name}`);
    if (t.dtype !== spec.dtype) throw invalidArgument(field, `must be ${spec.dtype}, got ${t.dtype}`);
    const info = DATA_TYPES[spec.dtype];
    if (!(t.data instanceof info.array)) throw invalidArgument(field, `data must be a ${info.array.name} for ${spec.dtype}`);
    const shown = `[${t.dims.join(", ")}]`;
    if (t.dims.length !== spec.shape.length) {
      throw invalidArgument(field, `must have ${spec.shape.length} dimensions (${spec.axes}), got ${shown}`);
    }
    spec.shape.forEach((want, i) => {
      const got = t.dims[i]!;
      const axis = `dimension ${i} (${spec.axes[i]})`;
      if (!Number.isInteger(got) || got < 1) throw invalidArgument(field, `${axis} must be a positive integer, got ${shown}`);
      if (typeof want === "number" && want !== -1 && got !== want) throw invalidArgument(field, `${axis} must be ${want}, got ${shown}`);
      if (typeof want === "string") {
        const seen = symbols.get(want);
        if (seen !== undefined && seen.size !== got) {
          throw invalidArgument(field, `${axis} is ${want} = ${got}, but ${seen.where} has ${want} = ${seen.size}`);
        }
        symbols.set(want, { size: got, where: field });
      }
    });
    const count = t.dims.reduce((a, b) => a * b, 1);
    if (t.data.length !== count) throw invalidArgument(field, `has ${t.data.length} elements; dims ${shown} need ${count}`);
    // A copy: the caller keeps its array (it may be a view into a larger message buffer), the copy is transferred.
    wire[spec.name] = { dtype: spec.dtype, dims: [...t.dims], data: t.data.slice().buffer as ArrayBuffer };
  }
  return wire;
}

function fromWire(outputs: Record<string, WireTensor>): Record<string, TensorData> {
  const result: Record<string, TensorData> = {};
  for (const [name, t] of Object.entries(outputs)) {
    const info = DATA_TYPES[t.dtype];
    result[name] = { dtype: t.dtype, dims: t.dims, data: new info.array(t.data, 0, t.data.byteLength / info.bytes) };
  }
  return result;
}

export class ModelRegistry {
  private constructor(
    private readonly models: Map<string, LoadedModel>,
    private readonly pool: WorkerPool,
  ) {}

  /**
   * Loads every `<modelsDir>/<folder>/model.json`. Refuses to start (throws) on any bad manifest, an
   * ONNX file whose sha256 differs from its manifest (DataCorruption naming the file), or a manifest
   * that disagrees with its graph (InvalidArgument, field `<manifest path>:inputs[0].name`): serving
   * a model other than the one described is worse than not serving.
   */
  static async load(modelsDir: string, options: RegistryOptions): Promise<ModelRegistry> {
    const log = options.logger;
    const workers = positiveInt("workers", options.workers ?? 1, 1);
    const intraOpThreads = positiveInt("intraOpThreads", options.intraOpThreads ?? Math.max(1, Math.floor(availableParallelism() / workers)), 1);
    const maxQueuePerModel = positiveInt("maxQueuePerModel", options.maxQueuePerModel ?? 16, 0);
    const maxQueuePerClient = positiveInt("maxQueuePerClient", options.maxQueuePerClient ?? maxQueuePerModel, 0);
    const dir = resolve(modelsDir);
    let folders: string[];
    try {
      folders = (await readdir(dir)).sort();
    } catch (e) {
      throw notFound(dir, `cannot read the models folder (${(e as Error).message})`);
    }

    const found: Omit<LoadedModel, "executionProvider">[] = [];
    for (const folder of folders) {
      const manifestPath = join(dir, folder, "model.json");
      let manifestJson: string;
      try {
        manifestJson = await readFile(manifestPath, "utf8");
      } catch (e) {
        if (isMissing(e)) continue;
        throw e;
      }
      const manifest = inFile(manifestPath, () => {
        let json: unknown;
        try {
          json = JSON.parse(manifestJson);
        } catch (e) {
          throw new SpatialSamError("InvalidArgument", `not valid JSON (${(e as Error).message})`);
        }
        return parseManifest(json);
      });
      const other = found.find((m) => m.manifest.name === manifest.name);
      if (other !== undefined) throw invalidArgument(`${manifestPath}:name`, `model ${manifest.name} is also defined by ${other.manifestPath}`);
      const onnxPath = join(dir, folder, manifest.onnx);
      let sha256: string;
      try {
        sha256 = await sha256File(onnxPath);
      } catch (e) {
        if (isMissing(e)) throw notFound(onnxPath, `the ONNX file named by ${manifestPath} does not exist`);
        throw e;
      }
      if (sha256 !== manifest.sha256) {
        throw dataCorruption(onnxPath, `sha256 is ${sha256} but ${manifestPath} says ${manifest.sha256}; refusing to serve a model other than the one described`);
      }
      found.push({ manifest, manifestJson, manifestPath, onnxPath });
    }
    if (found.length === 0) log.warn({ modelsDir: dir }, "no */model.json found; serving no models");

    const pool = await WorkerPool.start({
      models: found.map((m) => ({ name: m.manifest.name, onnxPath: m.onnxPath })),
      workers,
      intraOpThreads,
      executionProvider: options.executionProvider ?? "cpu",
      maxQueuePerModel,
      maxQueuePerClient,
      fairShare: options.fairShare ?? true,
      logger: log,
      allowTestFaults: options.allowTestFaults ?? false,
    });
    const models = new Map<string, LoadedModel>();
    try {
      for (const m of found) {
        const graph: GraphInfo = pool.graphs[m.manifest.name]!;
        inFile(m.manifestPath, () => {
          checkAgainstGraph("inputs", m.manifest.inputs, graph.inputs);
          checkAgainstGraph("outputs", m.manifest.outputs, graph.outputs);
        });
        models.set(m.manifest.name, { ...m, executionProvider: pool.executionProvider });
        log.info(
          { model: m.manifest.name, version: m.manifest.version, kind: m.manifest.kind, sha256: m.manifest.sha256, executionProvider: pool.executionProvider },
          "model loaded",
        );
      }
    } catch (e) {
      await pool.close();
      throw e;
    }
    return new ModelRegistry(models, pool);
  }

  /** Every loaded model, by name. */
  list(): LoadedModel[] {
    return [...this.models.values()];
  }

  get(model: string): LoadedModel | undefined {
    return this.models.get(model);
  }

  /**
   * Runs `model` in a worker thread. Inputs are checked against the manifest first (InvalidArgument
   * naming `inputs.<name>`) and copied, so the caller keeps its arrays. Rejects NotFound (`model`)
   * for an unknown model, ResourceExhausted when its queue is full, Cancelled when `signal` aborts,
   * Unavailable when the worker dies mid-run or the registry is closing. Waiting runs of different
   * `client`s take turns.
   */
  async run(model: string, inputs: Record<string, TensorData>, options: RunOptions = {}): Promise<Record<string, TensorData>> {
    const loaded = this.models.get(model);
    if (loaded === undefined) {
      throw notFound("model", `no model named ${JSON.stringify(model)} (loaded: ${[...this.models.keys()].join(", ") || "none"})`);
    }
    throwIfAborted(options.signal);
    const outputs = await this.pool.run(model, toWireInputs(loaded.manifest, inputs), options);
    return fromWire(outputs);
  }

  /** Worker and queue counters (for metrics and tests). */
  stats(): PoolStats {
    return this.pool.stats();
  }

  /** Makes the worker that takes the next request die before replying. Needs allowTestFaults. */
  armFaultForTest(fault: TestFault): void {
    this.pool.armFaultForTest(fault);
  }

  /** Fails waiting and running requests with Unavailable and stops the workers. */
  async close(): Promise<void> {
    await this.pool.close();
  }
}
