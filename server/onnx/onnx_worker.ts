// A worker thread that owns one onnxruntime InferenceSession per model and runs them on request.
// session.run blocks the thread it runs on for the whole inference: that is why it lives here and
// never on the gRPC thread. The pool sends a worker one request at a time.

import { parentPort, workerData } from "node:worker_threads";
import { InferenceSession, Tensor } from "onnxruntime-node";
import { DATA_TYPES, isDataType, type TypedArray } from "#src/dtype.ts";
import type { ExecutionProvider, FromWorker, GraphInfo, RunRequest, TestFault, ToWorker, ValueInfo, WireTensor, WorkerInit } from "./messages.ts";

const init = workerData as WorkerInit;
const port = parentPort!;

function post(message: FromWorker, transfer: ArrayBuffer[] = []): void {
  port.postMessage(message, transfer);
}

class ModelLoadError extends Error {
  constructor(
    readonly model: string,
    cause: unknown,
  ) {
    super(cause instanceof Error ? cause.message : String(cause), { cause });
  }
}

async function createSessions(provider: ExecutionProvider): Promise<Map<string, InferenceSession>> {
  const sessions = new Map<string, InferenceSession>();
  for (const { name, onnxPath } of init.models) {
    try {
      sessions.set(
        name,
        await InferenceSession.create(onnxPath, {
          executionProviders: [provider],
          intraOpNumThreads: init.intraOpThreads,
          // One graph at a time per worker: parallelism comes from intra-op threads and from workers.
          interOpNumThreads: 1,
          executionMode: "sequential",
          graphOptimizationLevel: "all",
        }),
      );
    } catch (e) {
      await Promise.all([...sessions.values()].map((s) => s.release()));
      throw new ModelLoadError(name, e);
    }
  }
  return sessions;
}

function valueInfo(meta: InferenceSession.ValueMetadata): ValueInfo {
  return meta.isTensor ? { name: meta.name, type: meta.type, shape: [...meta.shape] } : { name: meta.name, type: undefined, shape: [] };
}

/** The bytes of `a` as an ArrayBuffer of exactly its length, ready to transfer (copied only if `a` is a view). */
function ownBuffer(a: TypedArray): ArrayBuffer {
  if (a.byteOffset === 0 && a.byteLength === a.buffer.byteLength && a.buffer instanceof ArrayBuffer) return a.buffer;
  return a.slice().buffer as ArrayBuffer;
}

function die(fault: TestFault): void {
  if (fault === "exit") process.exit(1);
  setImmediate(() => {
    throw new Error("test fault: uncaught exception in the ONNX worker");
  });
}

async function run(sessions: Map<string, InferenceSession>, req: RunRequest): Promise<void> {
  const session = sessions.get(req.model);
  if (session === undefined) {
    post({ type: "error", id: req.id, message: `model ${req.model} is not loaded in this worker` });
    return;
  }
  let results: InferenceSession.OnnxValueMapType;
  try {
    const feeds: Record<string, Tensor> = {};
    for (const [name, t] of Object.entries(req.inputs)) {
      const info = DATA_TYPES[t.dtype];
      feeds[name] = new Tensor(info.onnx, new info.array(t.data, 0, t.data.byteLength / info.bytes), t.dims);
    }
    results = await session.run(feeds);
  } catch (e) {
    post({ type: "error", id: req.id, message: e instanceof Error ? e.message : String(e) });
    return;
  }
  // The fault fires after the run and before the reply: to the pool that is a worker dying mid-request.
  if (req.fault !== undefined && init.allowTestFaults) {
    die(req.fault);
    return;
  }
  const outputs: Record<string, WireTensor> = {};
  const transfer: ArrayBuffer[] = [];
  for (const name of session.outputNames) {
    const t = results[name] as Tensor;
    if (!isDataType(t.type)) {
      post({ type: "error", id: req.id, message: `output ${name} has onnxruntime type ${t.type}, which the server cannot return` });
      return;
    }
    const data = ownBuffer(t.data as TypedArray);
    outputs[name] = { dtype: t.type, dims: [...t.dims], data };
    transfer.push(data);
  }
  post({ type: "ok", id: req.id, outputs }, transfer);
}

let sessions: Map<string, InferenceSession> | undefined;
let closeRequested = false;

async function shutdown(): Promise<void> {
  if (sessions !== undefined) await Promise.all([...sessions.values()].map((s) => s.release()));
  process.exit(0);
}

let running = false;

// Listening from the start, so a close that arrives while the sessions load is not lost. Sessions
// are released only between runs, never under one.
port.on("message", (message: ToWorker) => {
  if (message.type === "close") {
    closeRequested = true;
    if (sessions !== undefined && !running) void shutdown();
  } else if (sessions !== undefined) {
    running = true;
    void run(sessions, message).finally(() => {
      running = false;
      if (closeRequested) void shutdown();
    });
  }
});

async function start(): Promise<void> {
  let provider = init.executionProvider;
  let fallbackReason: string | undefined;
  try {
    try {
      sessions = await createSessions(provider);
    } catch (e) {
      if (provider === "cpu") throw e;
      fallbackReason = e instanceof Error ? e.message : String(e);
      provider = "cpu";
      sessions = await createSessions(provider);
    }
  } catch (e) {
    const model = e instanceof ModelLoadError ? e.model : "";
    post({ type: "load_failed", model, message: e instanceof Error ? e.message : String(e) });
    if (closeRequested) process.exit(0);
    return;
  }
  if (closeRequested) return shutdown();
  const graphs: Record<string, GraphInfo> = {};
  for (const [name, s] of sessions) graphs[name] = { inputs: s.inputMetadata.map(valueInfo), outputs: s.outputMetadata.map(valueInfo) };
  post({ type: "ready", executionProvider: provider, ...(fallbackReason === undefined ? {} : { fallbackReason }), graphs });
}

void start();
