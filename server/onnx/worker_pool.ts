// A fixed set of ONNX worker threads with bounded waiting per model and per client. Requests go to an
// idle worker; otherwise they wait in their client's FIFO and clients take turns (fair_queue.ts); a
// full bound rejects at once; aborts, worker deaths and shutdown settle every request exactly once.

import { Worker } from "node:worker_threads";
import type { Logger } from "pino";
import { cancelled, dataCorruption, invalidArgument, notFound, resourceExhausted, unavailable, type SpatialSamError } from "#src/errors.ts";
import { FairQueue } from "./fair_queue.ts";
import type { CloseRequest, ExecutionProvider, FromWorker, GraphInfo, Ready, RunRequest, TestFault, WireTensor, WorkerInit } from "./messages.ts";

export interface WorkerPoolOptions {
  models: { name: string; onnxPath: string }[];
  workers: number;
  intraOpThreads: number;
  executionProvider: ExecutionProvider;
  /** Requests that may wait per model while every worker is busy; one more is rejected. */
  maxQueuePerModel: number;
  /** Requests one client may have waiting per model; one more is rejected. Default maxQueuePerModel. */
  maxQueuePerClient?: number;
  /**
   * Clients take turns (true, the default): a waiting request of the client served least recently
   * goes first. False: the oldest waiting request goes first, whoever sent it.
   */
  fairShare?: boolean;
  logger: Logger;
  /** Lets `armFaultForTest` make a worker die mid-request. Never set outside tests. */
  allowTestFaults: boolean;
}

export interface PoolStats {
  /** Workers that have loaded every model (idle or busy). */
  ready: number;
  busy: number;
  /** Requests waiting, per model. */
  queued: Record<string, number>;
  /** Clients with at least one request waiting. */
  waitingClients: number;
  /** Requests handed to a worker since start. */
  dispatched: number;
  /** Workers that died unexpectedly since start (each was replaced). */
  workerDeaths: number;
}

/** Per request: who it is for (fair scheduling) and how to stop it. */
export interface PoolRunOptions {
  signal?: AbortSignal;
  /** The client the request is for (a token's principal, a session, a peer); "" when unknown. */
  client?: string;
  /**
   * Speculative work (embedding slices nobody has asked for yet): it runs only when no other request
   * waits, never counts as its client's turn nor against the queue bounds of the others.
   */
  background?: boolean;
  /** Called when a worker takes the request (it can no longer be cancelled before it runs). */
  onStart?: () => void;
}

interface Job {
  id: number;
  /** Arrival order, for FairQueue. */
  seq: number;
  client: string;
  model: string;
  inputs: Record<string, WireTensor>;
  resolve: (outputs: Record<string, WireTensor>) => void;
  reject: (e: SpatialSamError) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
  settled: boolean;
  background: boolean;
  onStart: (() => void) | undefined;
  fault?: TestFault;
}

type SlotState = "starting" | "idle" | "busy" | "dead";

// Replacements that die before they are ready (a broken install, a model that no longer loads) are
// retried with a growing delay instead of in a tight loop.
const RESPAWN_BASE_MS = 500;
const RESPAWN_MAX_MS = 30_000;

export class WorkerPool {
  private readonly slots = new Set<Slot>();
  private readonly waiting: FairQueue<Job>;
  /** Background requests, oldest first: handed out only when `waiting` is empty. */
  private readonly background: Job[] = [];
  /** Waiting requests per model, and per model and client (key `model\0client`). */
  private readonly queued = new Map<string, number>();
  private readonly queuedByClient = new Map<string, number>();
  private nextId = 1;
  private dispatched = 0;
  private workerDeaths = 0;
  private failedStarts = 0;
  private closing = false;
  private started = false;
  private faultArmed: TestFault | undefined;
  private respawnTimer: NodeJS.Timeout | undefined;
  private pendingRespawns = 0;

  private constructor(
    private readonly options: WorkerPoolOptions,
    /** The provider every worker uses: the requested one, or cpu after a failed cuda start. */
    readonly executionProvider: ExecutionProvider,
    /** What each model's session reports about its graph (from the first worker). */
    readonly graphs: Record<string, GraphInfo>,
  ) {
    for (const m of options.models) this.queued.set(m.name, 0);
    this.waiting = new FairQueue<Job>(options.fairShare ?? true);
  }

  /**
   * Starts the workers and resolves once every one has loaded every model. The first worker decides
   * the execution provider (cuda falls back to cpu there, logged once); the others start with it.
   */
  static async start(options: WorkerPoolOptions): Promise<WorkerPool> {
    const first = new Slot(options, options.executionProvider);
    let ready: Ready;
    try {
      ready = await first.ready;
    } catch (e) {
      await first.worker.terminate();
      throw e;
    }
    if (ready.fallbackReason !== undefined) {
      options.logger.warn(
        { requested: options.executionProvider, using: ready.executionProvider, reason: ready.fallbackReason },
        `execution provider ${options.executionProvider} failed to load; falling back to ${ready.executionProvider}`,
      );
    }
    const pool = new WorkerPool(options, ready.executionProvider, ready.graphs);
    pool.adopt(first);
    first.state = "idle";
    const others = Array.from({ length: options.workers - 1 }, () => pool.add());
    try {
      await Promise.all(others.map((s) => s.ready));
    } catch (e) {
      await pool.close();
      throw e;
    }
    pool.started = true;
    options.logger.info(
      { workers: options.workers, intraOpThreads: options.intraOpThreads, executionProvider: pool.executionProvider, models: options.models.map((m) => m.name) },
      "ONNX workers ready",
    );
    return pool;
  }

  /**
   * Runs `model` on `inputs` in the next free worker. The input buffers are transferred (the caller
   * must not use them afterwards). Rejects ResourceExhausted at once when the model's queue, or this
   * client's share of it, is full; Cancelled when `signal` aborts (a queued request never runs; a
   * running one's result is dropped); Unavailable when the worker dies or the pool closes.
   */
  run(model: string, inputs: Record<string, WireTensor>, options: PoolRunOptions = {}): Promise<Record<string, WireTensor>> {
    const { signal } = options;
    const client = options.client ?? "";
    return new Promise((resolve, reject) => {
      const queued = this.queued.get(model);
      if (queued === undefined) return reject(notFound("model", `no model named ${JSON.stringify(model)}`));
      if (this.closing) return reject(unavailable("the model pool is shutting down"));
      if (signal?.aborted) return reject(cancelled());
      const background = options.background === true;
      const idle = background && this.waiting.size > 0 ? undefined : this.idleSlot();
      if (background && idle === undefined && this.background.length >= this.options.maxQueuePerModel) {
        return reject(resourceExhausted(`${this.background.length} background requests are waiting; this one is dropped`, "model"));
      }
      if (idle === undefined && !background) {
        if (queued >= this.options.maxQueuePerModel) {
          return reject(resourceExhausted(`model ${model} already has ${queued} requests waiting for a worker; try again later`, "model"));
        }
        const mine = this.queuedByClient.get(`${model}\0${client}`) ?? 0;
        const perClient = this.options.maxQueuePerClient ?? this.options.maxQueuePerModel;
        if (mine >= perClient) {
          return reject(resourceExhausted(`this client already has ${mine} requests of model ${model} waiting for a worker (at most ${perClient}); try again later`, "model"));
        }
      }
      const id = this.nextId++;
      const job: Job = { id, seq: id, client, model, inputs, resolve, reject, signal, onAbort: undefined, settled: false, background, onStart: options.onStart };
      if (this.faultArmed !== undefined) {
        job.fault = this.faultArmed;
        this.faultArmed = undefined;
      }
      if (signal !== undefined) {
        job.onAbort = () => this.abort(job);
        signal.addEventListener("abort", job.onAbort, { once: true });
      }
      if (idle !== undefined) {
        if (!background) this.waiting.started(client);
        this.dispatch(idle, job);
      } else if (background) {
        this.background.push(job);
      } else {
        this.waiting.push(job);
        this.count(job, 1);
      }
    });
  }

  /** Makes the worker that takes the next request die before it replies (exit(1) or an uncaught throw). */
  armFaultForTest(fault: TestFault): void {
    if (!this.options.allowTestFaults) throw new Error("armFaultForTest needs a pool created with allowTestFaults");
    this.faultArmed = fault;
  }

  stats(): PoolStats {
    let ready = 0;
    let busy = 0;
    for (const s of this.slots) {
      if (s.state === "idle" || s.state === "busy") ready++;
      if (s.state === "busy") busy++;
    }
    return { ready, busy, queued: Object.fromEntries(this.queued), waitingClients: this.waiting.waitingClients(), dispatched: this.dispatched, workerDeaths: this.workerDeaths };
  }

  /** Fails every waiting and running request with Unavailable and stops the workers. */
  async close(): Promise<void> {
    this.closing = true;
    clearTimeout(this.respawnTimer);
    const shutdown = () => unavailable("the model pool is shutting down");
    for (const job of this.waiting.drain()) {
      this.count(job, -1);
      this.settle(job, shutdown());
    }
    for (const job of this.background.splice(0)) this.settle(job, shutdown());
    const slots = [...this.slots];
    for (const s of slots) if (s.job !== undefined) this.settle(s.job, shutdown());
    // Each worker exits by itself after its current run: terminate() during a run would abort the process.
    await Promise.all(slots.map((s) => s.stop()));
  }

  private idleSlot(): Slot | undefined {
    for (const s of this.slots) if (s.state === "idle") return s;
    return undefined;
  }

  private add(): Slot {
    const slot = new Slot(this.options, this.executionProvider);
    this.adopt(slot);
    return slot;
  }

  /** Wires a spawned worker's events into the pool. */
  private adopt(slot: Slot): void {
    this.slots.add(slot);
    slot.ready.then(
      () => {
        if (slot.state !== "starting") return;
        slot.state = "idle";
        this.failedStarts = 0;
        this.pump();
      },
      (e: unknown) => {
        // During start() the error is thrown to the caller instead; the exit that follows is counted by onExit.
        if (this.started && !this.closing) this.options.logger.error({ err: e }, "a replacement ONNX worker could not load its models");
      },
    );
    slot.worker.on("message", (m: FromWorker) => {
      if (m.type !== "ok" && m.type !== "error") return;
      const job = slot.job;
      if (job === undefined || job.id !== m.id) return;
      slot.job = undefined;
      slot.state = "idle";
      if (!job.background) this.waiting.finished(job.client);
      if (m.type === "ok") this.settle(job, undefined, m.outputs);
      // Inputs passed the manifest checks, so this is most often a dynamic size the graph cannot take.
      else this.settle(job, invalidArgument("inputs", `onnxruntime rejected the inputs of model ${job.model}: ${m.message}`));
      this.pump();
    });
    slot.worker.on("exit", (code) => this.onExit(slot, code));
  }

  private onExit(slot: Slot, code: number): void {
    const wasReady = slot.state === "idle" || slot.state === "busy";
    slot.state = "dead";
    this.slots.delete(slot);
    if (this.closing) return;
    this.workerDeaths++;
    const reason = slot.error?.message ?? `exit code ${code}`;
    const job = slot.job;
    slot.job = undefined;
    if (job !== undefined && !job.background) this.waiting.finished(job.client);
    this.options.logger.error(
      { model: job?.model, requestId: job?.id, exitCode: code, err: slot.error },
      `ONNX worker died (${reason}); replacing it`,
    );
    if (job !== undefined) {
      this.settle(job, unavailable(`the ONNX worker running model ${job.model} died (${reason}); the request may be retried`, "model"));
    }
    if (!wasReady) this.failedStarts++;
    this.pendingRespawns++;
    const delay = this.failedStarts === 0 ? 0 : Math.min(RESPAWN_MAX_MS, RESPAWN_BASE_MS * 2 ** (this.failedStarts - 1));
    clearTimeout(this.respawnTimer);
    this.respawnTimer = setTimeout(() => this.respawn(), delay);
  }

  private respawn(): void {
    if (this.closing) return;
    for (; this.pendingRespawns > 0; this.pendingRespawns--) this.add();
  }

  /** Hands waiting requests to idle workers: clients take turns, each client's requests in order, across models. */
  private pump(): void {
    for (let slot = this.idleSlot(); slot !== undefined; slot = this.idleSlot()) {
      const job = this.waiting.shift();
      if (job !== undefined) this.count(job, -1);
      const next = job ?? this.background.shift();
      if (next === undefined) return;
      this.dispatch(slot, next);
    }
  }

  private count(job: Job, delta: 1 | -1): void {
    this.queued.set(job.model, this.queued.get(job.model)! + delta);
    const key = `${job.model}\0${job.client}`;
    const n = (this.queuedByClient.get(key) ?? 0) + delta;
    if (n === 0) this.queuedByClient.delete(key);
    else this.queuedByClient.set(key, n);
  }

  private dispatch(slot: Slot, job: Job): void {
    slot.state = "busy";
    slot.job = job;
    this.dispatched++;
    const request: RunRequest = { type: "run", id: job.id, model: job.model, inputs: job.inputs };
    if (job.fault !== undefined) request.fault = job.fault;
    slot.worker.postMessage(request, Object.values(job.inputs).map((t) => t.data));
    job.onStart?.();
  }

  /** A queued request is dropped; a running one is answered now and its result discarded later. */
  private abort(job: Job): void {
    if (job.background) {
      const at = this.background.indexOf(job);
      if (at >= 0) this.background.splice(at, 1);
    } else if (this.waiting.remove(job)) this.count(job, -1);
    this.settle(job, cancelled());
  }

  private settle(job: Job, error: SpatialSamError | undefined, outputs?: Record<string, WireTensor>): void {
    if (job.settled) return;
    job.settled = true;
    if (job.onAbort !== undefined) job.signal?.removeEventListener("abort", job.onAbort);
    if (error !== undefined) job.reject(error);
    else job.resolve(outputs!);
  }
}

/** One worker thread and what the pool knows about it. */
class Slot {
  private readonly exited: Promise<void>;

  readonly worker: Worker;
  state: SlotState = "starting";
  job: Job | undefined;
  /** Why the worker failed, from its 'error' event, reported with the exit that follows. */
  error: Error | undefined;
  /** Resolves when the worker has loaded every model; rejects if it cannot. */
  readonly ready: Promise<Ready>;

  constructor(options: WorkerPoolOptions, provider: ExecutionProvider) {
    const init: WorkerInit = {
      models: options.models,
      executionProvider: provider,
      intraOpThreads: options.intraOpThreads,
      allowTestFaults: options.allowTestFaults,
    };
    // A JS entry that registers tsx in the worker, then imports onnx_worker.ts (see that file for why).
    // execArgv is empty: the parent's flags (e.g. --eval, --input-type) can be invalid for a worker.
    const worker = new Worker(new URL("./onnx_worker_boot.mjs", import.meta.url), { workerData: init, execArgv: [] });
    this.worker = worker;
    worker.on("error", (e) => {
      this.error = e;
    });
    this.exited = new Promise((resolve) => worker.once("exit", () => resolve()));
    this.ready = new Promise<Ready>((resolve, reject) => {
      const onMessage = (m: FromWorker) => {
        if (m.type === "ready") {
          done();
          resolve(m);
        } else if (m.type === "load_failed") {
          done();
          const onnxPath = options.models.find((x) => x.name === m.model)?.onnxPath;
          const message = `onnxruntime cannot load model ${JSON.stringify(m.model)}: ${m.message}`;
          reject(onnxPath === undefined ? unavailable(message) : dataCorruption(onnxPath, message));
          void worker.terminate();
        }
      };
      const onExit = (code: number) => {
        done();
        reject(unavailable(`an ONNX worker exited while loading its models (${this.error?.message ?? `exit code ${code}`})`));
      };
      const done = () => {
        worker.off("message", onMessage);
        worker.off("exit", onExit);
      };
      worker.on("message", onMessage);
      worker.on("exit", onExit);
    });
  }

  /** Asks the worker to release its sessions and exit after its current run; resolves on exit. */
  stop(): Promise<void> {
    if (this.state !== "dead") this.worker.postMessage({ type: "close" } satisfies CloseRequest);
    return this.exited;
  }
}
