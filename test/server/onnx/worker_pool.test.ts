// Pool behaviour with real worker threads and real sessions: the event loop stays free, queues are
// bounded per model, aborts and worker deaths settle exactly the affected request, close() drains.
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { SpatialSamError } from "#src/errors.ts";
import { ModelRegistry, type RegistryOptions, type TensorData } from "#server/onnx/model_registry.ts";
import { WorkerPool } from "#server/onnx/worker_pool.ts";
import { readNpy } from "#test/helpers/npy.ts";

const MODELS = fileURLToPath(new URL("../../fixtures/models", import.meta.url));
const goldenIn = readNpy(`${MODELS}/tiny_conv3d/golden_input.npy`);
const goldenOut = readNpy(`${MODELS}/tiny_conv3d/golden_output.npy`);

const volume = (n: number): Record<string, TensorData> => ({
  image: { dtype: "float32", dims: [1, 1, n, n, n], data: new Float32Array(n ** 3).map((_, i) => Math.sin(i)) },
});
const tiny = (): Record<string, TensorData> => ({ image: { dtype: "float32", dims: goldenIn.shape, data: goldenIn.data } });

function matchesGolden(out: Record<string, TensorData>): boolean {
  const a = out.out!.data as Float32Array;
  const b = goldenOut.data as Float32Array;
  return a.length === b.length && a.every((v, i) => Math.abs(v - b[i]!) < 1e-5);
}

/** Resolves to the error a promise rejects with (and fails the test if it resolves). */
async function failure(p: Promise<unknown>): Promise<SpatialSamError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(SpatialSamError);
  return e as SpatialSamError;
}

/** Records the order in which promises settle. */
function tracker() {
  const order: string[] = [];
  const track = <T>(name: string, p: Promise<T>): Promise<T> => {
    p.then(
      () => order.push(`${name}:ok`),
      (e: SpatialSamError) => order.push(`${name}:${e._tag}`),
    );
    return p;
  };
  return { order, track };
}

const load = (options: Partial<RegistryOptions> = {}) =>
  ModelRegistry.load(MODELS, { logger: pino({ level: "silent" }), workers: 1, intraOpThreads: 1, ...options });

describe("worker pool (one worker, queue of 1 per model, test faults on)", () => {
  // One registry for these cases (each starts and ends with an idle worker): workers take ~0.5 s to start.
  let registry: ModelRegistry;
  beforeAll(async () => {
    registry = await load({ maxQueuePerModel: 1, allowTestFaults: true });
  });
  afterAll(async () => {
    await registry.close();
  });

  it("keeps the main event loop free while a model runs", async () => {
    // A 1 ms interval on the main thread: if session.run ran here it would not tick at all
    // during the run (RECIPES: 0 ticks in a 145 ms run), so the longest gap would be the whole run.
    let ticks = 0;
    let maxGap = 0;
    let last = performance.now();
    const probe = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
      ticks++;
    }, 1);
    const start = performance.now();
    const out = await registry.run("slow_conv3d", volume(64));
    const runMs = performance.now() - start;
    clearInterval(probe);
    console.info(`slow_conv3d 64^3: ${runMs.toFixed(0)} ms in the worker; main thread ${ticks} ticks, longest gap ${maxGap.toFixed(1)} ms`);
    expect(out.out!.dims).toEqual([1, 1, 64, 64, 64]);
    expect(ticks).toBeGreaterThanOrEqual(10);
    expect(maxGap).toBeLessThan(runMs / 2);
  });

  it("rejects ResourceExhausted at once when a model's queue is full, per model", async () => {
    const dispatched = registry.stats().dispatched;
    const { order, track } = tracker();
    const running = track("slow0", registry.run("slow_conv3d", volume(40)));
    const queued = track("slow1", registry.run("slow_conv3d", volume(40)));
    const extra = [2, 3].map((i) => track(`slow${i}`, registry.run("slow_conv3d", volume(40))));
    // Another model has its own queue: it waits instead of being rejected.
    const other = track("tiny", registry.run("tiny_conv3d", tiny()));
    expect(registry.stats().queued).toEqual({ slow_conv3d: 1, tiny_conv3d: 1 });

    for (const p of extra) {
      const e = await failure(p);
      expect(e._tag).toBe("ResourceExhausted");
      expect(e.field).toBe("model");
      expect(e.message).toContain("slow_conv3d");
    }
    // Rejected without waiting for the running request.
    expect(order).toEqual(["slow2:ResourceExhausted", "slow3:ResourceExhausted"]);

    await Promise.all([running, queued]);
    expect(matchesGolden(await other)).toBe(true);
    expect(order.slice(2)).toEqual(["slow0:ok", "slow1:ok", "tiny:ok"]);
    expect(registry.stats().dispatched - dispatched).toBe(3);
  });

  it("drops an aborted queued request without running it", async () => {
    const dispatched = registry.stats().dispatched;
    const running = registry.run("slow_conv3d", volume(40));
    const controller = new AbortController();
    const queued = registry.run("tiny_conv3d", tiny(), { signal: controller.signal });
    expect(registry.stats()).toMatchObject({ busy: 1, queued: { tiny_conv3d: 1 }, dispatched: dispatched + 1 });
    controller.abort();
    expect((await failure(queued))._tag).toBe("Cancelled");
    expect(registry.stats().queued.tiny_conv3d).toBe(0);
    await running;
    // Only the running request ever reached a worker.
    expect(registry.stats().dispatched).toBe(dispatched + 1);
    expect(matchesGolden(await registry.run("tiny_conv3d", tiny()))).toBe(true);
    expect(registry.stats().dispatched).toBe(dispatched + 2);
  });

  it("answers an aborted running request at once and drops its result", async () => {
    const controller = new AbortController();
    const running = registry.run("slow_conv3d", volume(48), { signal: controller.signal });
    const next = registry.run("tiny_conv3d", tiny());
    controller.abort();
    expect((await failure(running))._tag).toBe("Cancelled");
    // The worker is still inside session.run: the caller did not wait for it.
    expect(registry.stats().busy).toBe(1);
    expect(matchesGolden(await next)).toBe(true);
  });

  it("rejects a request whose signal already fired without dispatching it", async () => {
    const dispatched = registry.stats().dispatched;
    const e = await failure(registry.run("tiny_conv3d", tiny(), { signal: AbortSignal.abort() }));
    expect(e._tag).toBe("Cancelled");
    expect(registry.stats().dispatched).toBe(dispatched);
  });

  it.each(["exit", "throw"] as const)(
    "fails only the request in a worker that dies (%s), replaces the worker and keeps serving",
    async (fault) => {
      const deaths = registry.stats().workerDeaths;
      registry.armFaultForTest(fault);
      const doomed = registry.run("tiny_conv3d", tiny());
      const waiting = registry.run("tiny_conv3d", tiny());
      const e = await failure(doomed);
      expect(e._tag).toBe("Unavailable");
      expect(e.message).toMatch(/worker running model tiny_conv3d died/);
      expect(e.message).toMatch(fault === "exit" ? /exit code 1/ : /test fault: uncaught exception/);
      // The request queued behind it is served by the replacement worker.
      expect(matchesGolden(await waiting)).toBe(true);
      expect(matchesGolden(await registry.run("tiny_conv3d", tiny()))).toBe(true);
      expect(registry.stats()).toMatchObject({ ready: 1, workerDeaths: deaths + 1 });
    },
  );
});

describe("worker pool lifecycle", () => {
  it("runs one request per worker at a time, in parallel across workers", async () => {
    const registry = await load({ workers: 2 });
    expect(registry.stats().ready).toBe(2);
    const runs = [registry.run("slow_conv3d", volume(32)), registry.run("slow_conv3d", volume(32)), registry.run("tiny_conv3d", tiny())];
    expect(registry.stats()).toMatchObject({ busy: 2, queued: { slow_conv3d: 0, tiny_conv3d: 1 } });
    await Promise.all(runs);
    expect(registry.stats()).toMatchObject({ busy: 0, dispatched: 3 });
    await registry.close();
  });

  it("close() fails running and queued requests with Unavailable, and later calls too", async () => {
    const registry = await load();
    const running = registry.run("slow_conv3d", volume(40));
    const queued = registry.run("tiny_conv3d", tiny());
    const failures = [failure(running), failure(queued)];
    await registry.close();
    for (const e of await Promise.all(failures)) expect(e._tag).toBe("Unavailable");
    expect((await failure(registry.run("tiny_conv3d", tiny())))._tag).toBe("Unavailable");
  });
});

describe("WorkerPool without the registry's input checks", () => {
  it("turns an onnxruntime run error into InvalidArgument on `inputs`, and the worker keeps serving", async () => {
    const pool = await WorkerPool.start({
      models: [{ name: "tiny", onnxPath: `${MODELS}/tiny_conv3d/model.onnx` }],
      workers: 1,
      intraOpThreads: 1,
      executionProvider: "cpu",
      maxQueuePerModel: 4,
      logger: pino({ level: "silent" }),
      allowTestFaults: false,
    });
    try {
      // Two channels where the graph's first conv takes one: only onnxruntime can reject this here.
      const bad = { image: { dtype: "float32" as const, dims: [1, 2, 4, 4, 4], data: new Float32Array(128).buffer } };
      const e = await failure(pool.run("tiny", bad));
      expect(e._tag).toBe("InvalidArgument");
      expect(e.field).toBe("inputs");
      expect(e.message).toMatch(/onnxruntime rejected the inputs of model tiny: .+/);
      const good = { image: { dtype: "float32" as const, dims: goldenIn.shape, data: goldenIn.data.slice().buffer as ArrayBuffer } };
      const out = await pool.run("tiny", good);
      expect(out.out!.dims).toEqual([1, 2, 16, 32, 32]);
      expect(pool.stats()).toMatchObject({ ready: 1, workerDeaths: 0, dispatched: 2 });
    } finally {
      await pool.close();
    }
  });
});

describe("worker pool: clients take turns", () => {
  it("runs a second client's request before the rest of the first client's burst, and bounds each client's share", async () => {
    const registry = await load({ maxQueuePerModel: 16, maxQueuePerClient: 3 });
    try {
      const { order, track } = tracker();
      const burst = [0, 1, 2, 3].map((i) => track(`A${i}`, registry.run("slow_conv3d", volume(32), { client: "A" })));
      // A0 runs, A1-A3 wait: A's share is full, though the model's queue is not.
      const e = await failure(registry.run("slow_conv3d", volume(32), { client: "A" }));
      expect(e._tag).toBe("ResourceExhausted");
      expect(e.field).toBe("model");
      expect(e.message).toContain("slow_conv3d");
      const other = track("B", registry.run("slow_conv3d", volume(32), { client: "B" }));
      expect(registry.stats()).toMatchObject({ busy: 1, queued: { slow_conv3d: 4 }, waitingClients: 2 });
      await Promise.all([...burst, other]);
      expect(order).toEqual(["A0:ok", "B:ok", "A1:ok", "A2:ok", "A3:ok"]);
    } finally {
      await registry.close();
    }
  });

  it("serves the oldest request first when fairShare is off", async () => {
    const registry = await load({ fairShare: false });
    try {
      const { order, track } = tracker();
      const burst = [0, 1, 2, 3].map((i) => track(`A${i}`, registry.run("slow_conv3d", volume(32), { client: "A" })));
      const other = track("B", registry.run("slow_conv3d", volume(32), { client: "B" }));
      await Promise.all([...burst, other]);
      expect(order).toEqual(["A0:ok", "A1:ok", "A2:ok", "A3:ok", "B:ok"]);
    } finally {
      await registry.close();
    }
  });
});

describe("worker pool: background requests", () => {
  it("run only when nothing else waits, never take a client's turn, and a queued one can be cancelled", async () => {
    const registry = await load({ maxQueuePerModel: 2 });
    try {
      const { order, track } = tracker();
      const started: string[] = [];
      const bg = (name: string, signal?: AbortSignal) =>
        track(name, registry.run("slow_conv3d", volume(32), { client: "S", background: true, onStart: () => started.push(name), ...(signal ? { signal } : {}) }));
      // The worker is idle and nothing waits: the first background request runs at once.
      const s0 = bg("S0");
      expect(started).toEqual(["S0"]);
      const s1 = bg("S1");
      const cancel = new AbortController();
      const s2 = bg("S2", cancel.signal);
      // Background requests do not count against the model's queue (2 here): A's and B's fit.
      const a = track("A", registry.run("slow_conv3d", volume(32), { client: "A" }));
      const b = track("B", registry.run("slow_conv3d", volume(32), { client: "S" }));
      cancel.abort();
      await Promise.allSettled([s0, s1, s2, a, b]);
      // S0 was running; A and the foreground request of S (its client's) go before S1; S2 never runs.
      expect(order).toEqual(["S2:Cancelled", "S0:ok", "A:ok", "B:ok", "S1:ok"]);
      expect(started).toEqual(["S0", "S1"]);
    } finally {
      await registry.close();
    }
  });
});
