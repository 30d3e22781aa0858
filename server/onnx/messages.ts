// The message contract between the pool (main thread) and an ONNX worker thread. Plain data only;
// tensor bytes travel as ArrayBuffers in the transfer list, so they are moved, not copied.

import type { DataType } from "#src/dtype.ts";

export type ExecutionProvider = "cpu" | "cuda";

/** A dense C-order tensor; `data` holds exactly product(dims) elements of `dtype`, little-endian. */
export interface WireTensor {
  dtype: DataType;
  dims: number[];
  data: ArrayBuffer;
}

/** How a test makes a worker die while it holds a request (honoured only with allowTestFaults). */
export type TestFault = "exit" | "throw";

/** The worker's `workerData`: what to load and how. */
export interface WorkerInit {
  models: { name: string; onnxPath: string }[];
  executionProvider: ExecutionProvider;
  intraOpThreads: number;
  allowTestFaults: boolean;
}

// ---- main thread -> worker

export interface RunRequest {
  type: "run";
  id: number;
  model: string;
  inputs: Record<string, WireTensor>;
  fault?: TestFault;
}

/**
 * Release the sessions and exit once the current run (if any) is over. Terminating a worker from
 * outside while onnxruntime is inside session.run aborts the whole process (the native callback
 * throws into a dying environment), so the pool never does that to a busy worker.
 */
export interface CloseRequest {
  type: "close";
}

export type ToWorker = RunRequest | CloseRequest;

// ---- worker -> main thread

/** What the session reports about one graph input or output. */
export interface ValueInfo {
  name: string;
  /** onnxruntime's type name (e.g. "float32", "bool"), or undefined for a non-tensor value. */
  type: string | undefined;
  /** Empty when the graph does not say; strings are symbolic (dynamic) dimensions. */
  shape: (number | string)[];
}

export interface GraphInfo {
  inputs: ValueInfo[];
  outputs: ValueInfo[];
}

/** Every session was created. `fallbackReason` is set when cuda was asked for but cpu is used. */
export interface Ready {
  type: "ready";
  executionProvider: ExecutionProvider;
  fallbackReason?: string;
  graphs: Record<string, GraphInfo>;
}

export interface LoadFailed {
  type: "load_failed";
  model: string;
  message: string;
}

export interface RunOk {
  type: "ok";
  id: number;
  outputs: Record<string, WireTensor>;
}

export interface RunFailed {
  type: "error";
  id: number;
  message: string;
}

export type FromWorker = Ready | LoadFailed | RunOk | RunFailed;
