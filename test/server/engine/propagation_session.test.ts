// Parity of the TypeScript propagation loop with the Python reference predictor: the golden session
// of models/spatialsam/fixtures/propagator_golden.py replayed through the same three ONNX graphs
// (real onnxruntime in worker threads), masks compared per slice by IoU, plus one step per graph.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "#server/log.ts";
import { EmbeddingCache } from "#server/engine/propagation/embedding_cache.ts";
import { loadPropagator, parsePropagatorConfig, type LoadedPropagator } from "#server/engine/propagation/propagator.ts";
import { PropagationSession, type Direction, type SliceProvider } from "#server/engine/propagation/session.ts";
import type { TensorData } from "#server/onnx/model_registry.ts";
import { readNpy } from "#test/helpers/npy.ts";

const dir = join(import.meta.dirname, "..", "..", "fixtures", "propagator");
const session = JSON.parse(readFileSync(join(dir, "session.json"), "utf8")) as {
  shape_zyx: [number, number, number];
  ops: {
    op: string;
    z?: number;
    obj_id?: number;
    points?: [number, number][];
    labels?: number[];
    box?: [number, number, number, number];
    direction?: Direction;
    start_z?: number;
    max_slices?: number;
    z_order?: number[];
    masks: string;
    mask_obj_ids: number[];
  }[];
  step: { graphs: Record<string, { inputs: Record<string, string>; outputs: Record<string, string> }> };
  tolerance: { tensors_atol: number; mask_iou_min: number };
};

let propagator: LoadedPropagator;

beforeAll(async () => {
  propagator = await loadPropagator(join(dir, "model"), { logger: silentLogger(), workers: 1, intraOpThreads: 1 });
});
afterAll(async () => {
  await propagator?.close();
});

function fixtureSlices(): SliceProvider {
  const image = readNpy(join(dir, "image.npy"));
  const sdf = readNpy(join(dir, "sdf.npy"));
  const [z, y, x] = session.shape_zyx;
  const n = y * x;
  return {
    shapeZyx: [z, y, x],
    imageKey: `fixture:${dir}`,
    image: async (k) => image.data.subarray(k * n, (k + 1) * n) as Uint8Array,
    sdf: async (k) => (sdf.data as Float32Array).slice(k * n, (k + 1) * n),
  };
}

/** IoU of two 0/1 masks; two empty masks agree (1). */
function iou(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let inter = 0;
  let union = 0;
  for (let i = 0; i < a.length; i++) {
    const p = a[i] !== 0;
    const q = b[i] !== 0;
    if (p && q) inter++;
    if (p || q) union++;
  }
  return union === 0 ? 1 : inter / union;
}

/** Replays session.json through a session of `p`, checking every mask against the golden .npy. */
async function replayGolden(p: LoadedPropagator, options: { readAhead?: boolean; prefetch?: boolean } = {}): Promise<EmbeddingCache> {
  const embeddings = new EmbeddingCache(64 << 20);
  const s = new PropagationSession({ propagator: p, slices: fixtureSlices(), embeddings, ...(options.readAhead === undefined ? {} : { readAhead: options.readAhead }) });
  const [, y, x] = session.shape_zyx;
  const n = y * x;
  let compared = 0;
  let nonEmpty = 0;
  for (const op of session.ops) {
    const golden = readNpy(join(dir, op.masks)).data as Uint8Array;
    const check = (k: number, got: Uint8Array, where: string) => {
      const want = golden.subarray(k * n, (k + 1) * n);
      expect(iou(got, want), where).toBeGreaterThanOrEqual(session.tolerance.mask_iou_min);
      compared++;
      if (want.some((v) => v !== 0)) nonEmpty++;
    };
    if (op.op === "add_prompts") {
      // Speculation around the slice about to be clicked, as the server does (not awaited).
      if (options.prefetch) s.prefetch([op.z!, op.z! + 1, op.z! - 1, op.z! + 2, op.z! - 2], { sdf: true });
      const masks = await s.addPrompts(BigInt(op.obj_id!), op.z!, {
        points: (op.points ?? []).map(([px, py], i) => ({ x: px, y: py, label: op.labels![i] as 0 | 1 })),
        ...(op.box ? { box: op.box } : {}),
      });
      expect(masks.map((m) => Number(m.objectId))).toEqual(op.mask_obj_ids);
      masks.forEach((m, k) => check(k, m.mask, `${op.masks} object ${m.objectId}`));
    } else {
      const zs: number[] = [];
      let i = 0;
      for await (const { z, masks } of s.propagate({
        direction: op.direction!,
        ...(op.start_z === undefined ? {} : { startZ: op.start_z }),
        ...(op.max_slices === undefined ? {} : { maxSlices: op.max_slices }),
      })) {
        zs.push(z);
        expect(masks.map((m) => Number(m.objectId))).toEqual(op.mask_obj_ids);
        masks.forEach((m, k) => check(i * op.mask_obj_ids.length + k, m.mask, `${op.masks} z=${z} object ${m.objectId}`));
        i++;
      }
      expect(zs).toEqual(op.z_order);
    }
  }
  expect(compared).toBe(2 + (9 + 9 + 8) * 2);
  // The fixture is only a test if the model finds the objects on most slices.
  expect(nonEmpty).toBeGreaterThan(compared / 2);
  return embeddings;
}

describe("golden session replay", () => {
  it("reproduces every add_prompts and propagate mask of the Python predictor (IoU >= 0.999 per slice)", async () => {
    await replayGolden(propagator);
  });

  it("does so too with two workers (next slice encoded ahead, objects decoded side by side)", async () => {
    const two = await loadPropagator(join(dir, "model"), { logger: silentLogger(), workers: 2, intraOpThreads: 1 });
    try {
      await replayGolden(two);
    } finally {
      await two.close();
    }
  });

  it("does so too reading one thing at a time (readAhead off, the engine's earlier behaviour)", async () => {
    await replayGolden(propagator, { readAhead: false });
  });

  it("does so too with slices embedded speculatively before each click, and those embeddings are used", async () => {
    const cache = await replayGolden(propagator, { prefetch: true });
    expect(cache.stats().prefetched).toBeGreaterThan(0);
    expect(cache.stats().prefetchUsed).toBeGreaterThan(0);
  });

  it("a click overtakes a speculative embedding still waiting for the worker; close cancels the rest", async () => {
    const one = await loadPropagator(join(dir, "model"), { logger: silentLogger(), workers: 1, intraOpThreads: 1 });
    try {
      const embeddings = new EmbeddingCache(64 << 20);
      const s = new PropagationSession({ propagator: one, slices: fixtureSlices(), embeddings });
      const before = one.registry.stats().dispatched;
      // Every slice queued at background priority, slice 11 last; the click on 11 must not wait for 0-10.
      s.prefetch([...Array(12).keys()]);
      const masks = await s.addPrompts(1n, 11, { points: [{ x: 30, y: 30, label: 1 }] });
      expect(masks.length).toBe(1);
      const ranBeforeClick = one.registry.stats().dispatched - before;
      // The click's own encoder and decoder runs plus the few speculative ones a worker had taken.
      expect(ranBeforeClick).toBeLessThan(12);
      s.close();
      await new Promise((r) => setTimeout(r, 200));
      // At most the one a worker had taken when the session closed; the queued ones never ran.
      expect(one.registry.stats().dispatched - before).toBeLessThanOrEqual(ranBeforeClick + 1);
      expect(one.registry.stats().busy).toBe(0);
    } finally {
      await one.close();
    }
  });

  it("each graph's step outputs equal the recorded PyTorch outputs within 1e-4", async () => {
    for (const [kind, io] of Object.entries(session.step.graphs)) {
      const inputs: Record<string, TensorData> = {};
      for (const [name, file] of Object.entries(io.inputs)) {
        const a = readNpy(join(dir, file));
        inputs[name] = { dtype: "float32", dims: a.shape, data: a.data };
      }
      const out = await propagator.registry.run(propagator.graphs[kind as keyof LoadedPropagator["graphs"]], inputs);
      for (const [name, file] of Object.entries(io.outputs)) {
        const want = readNpy(join(dir, file));
        const got = out[name]!;
        expect(got.dims, `${kind}.${name}`).toEqual(want.shape);
        let max = 0;
        for (let i = 0; i < want.data.length; i++) max = Math.max(max, Math.abs((got.data[i] as number) - (want.data[i] as number)));
        expect(max, `${kind}.${name}`).toBeLessThan(session.tolerance.tensors_atol);
      }
    }
  });
});

describe("session behaviour", () => {
  const slices = () => ({ propagator, slices: fixtureSlices(), embeddings: new EmbeddingCache(64 << 20) });

  it("refuses bad prompts by field: NaN, outside the slice, outside z, empty", async () => {
    const s = new PropagationSession(slices());
    await expect(s.addPrompts(1n, 0, { points: [{ x: Number.NaN, y: 3, label: 1 }] })).rejects.toThrow(/^points\[0\]\.x: must be a finite/);
    await expect(s.addPrompts(1n, 0, { points: [{ x: 1, y: 1, label: 1 }, { x: 2, y: 64, label: 0 }] })).rejects.toThrow(/^points\[1\]\.y: 64 lies outside/);
    await expect(s.addPrompts(1n, 12, { points: [{ x: 1, y: 1, label: 1 }] })).rejects.toThrow(/^z: /);
    await expect(s.addPrompts(1n, 0, {})).rejects.toThrow(/^points: empty prompt/);
    await expect(s.addPrompts(1n, 0, { box: [5, 5, 5, 9] })).rejects.toThrow(/^box: /);
    // A refused prompt leaves no object behind.
    expect(s.objectIds()).toEqual([]);
    await expect(s.removeObject(7n)).rejects.toThrow(/^object_id: no object 7/);
  });

  it("a mask-only prompt is its own output; remove and reset forget objects; cancel stops propagation", async () => {
    const s = new PropagationSession(slices());
    const [, y, x] = session.shape_zyx;
    const mask = new Uint8Array(y * x);
    for (let r = 10; r < 20; r++) for (let c = 30; c < 45; c++) mask[r * x + c] = 1;
    const [m] = await s.addPrompts(5n, 4, { mask });
    expect(m!.mask).toEqual(mask);
    expect(m!.objectScore).toBe(10);
    await s.addPrompts(6n, 4, { points: [{ x: 40, y: 40, label: 1 }] });
    expect(s.objectIds()).toEqual([5n, 6n]);
    expect(await s.removeObject(5n)).toEqual([6n]);

    const controller = new AbortController();
    const seen: number[] = [];
    await expect(
      (async () => {
        for await (const { z } of s.propagate({ direction: "forward", signal: controller.signal })) {
          seen.push(z);
          if (z === 6) controller.abort();
        }
      })(),
    ).rejects.toMatchObject({ _tag: "Cancelled" });
    expect(seen).toEqual([4, 5, 6]);
    // The lock was released: the session still answers.
    await s.reset();
    expect(s.objectIds()).toEqual([]);
    await expect(s.propagate().next()).rejects.toMatchObject({ _tag: "FailedPrecondition" });
  });

  it("a session that joined another's embedding computation survives that client's cancel", async () => {
    const embeddings = new EmbeddingCache(64 << 20);
    let open!: () => void;
    const gate = new Promise<void>((r) => (open = r));
    let reads = 0;
    const base = fixtureSlices();
    const gated: SliceProvider = { ...base, image: async (z) => (reads++, await gate, base.image(z)) };
    const a = new PropagationSession({ propagator, slices: gated, embeddings });
    const b = new PropagationSession({ propagator, slices: gated, embeddings });
    const controller = new AbortController();
    const first = a.addPrompts(1n, 2, { points: [{ x: 20, y: 20, label: 1 }] }, controller.signal);
    while (reads === 0) await new Promise((r) => setImmediate(r));
    const second = b.addPrompts(1n, 2, { points: [{ x: 20, y: 20, label: 1 }] });
    while (embeddings.stats().hits === 0) await new Promise((r) => setImmediate(r));
    controller.abort();
    open();
    await expect(first).rejects.toMatchObject({ _tag: "Cancelled" });
    expect((await second).map((m) => m.objectId)).toEqual([1n]);
    expect(reads).toBe(2);
  });

  it("a per-session memory bound refuses growth with ResourceExhausted", async () => {
    const s = new PropagationSession({ ...slices(), maxBytes: 64 * 64 * 3 });
    await s.addPrompts(1n, 3, { points: [{ x: 20, y: 20, label: 1 }] });
    await expect((async () => {
      for await (const _ of s.propagate()) void _;
    })()).rejects.toMatchObject({ _tag: "ResourceExhausted", field: "session_id" });
  });
});

describe("propagator.json validation", () => {
  const good = JSON.parse(readFileSync(join(dir, "model", "propagator.json"), "utf8")) as Record<string, unknown>;
  it("accepts the fixture and names the bad field", () => {
    expect(parsePropagatorConfig(good).maxCond).toBe(2);
    // A copy of the fixture's JSON with one field set (or deleted when value is undefined).
    const bad = (path: string, value: unknown) => {
      const j = structuredClone(good);
      const keys = path.split(".");
      const parent = keys.slice(0, -1).reduce((o, k) => o[k] as Record<string, unknown>, j);
      if (value === undefined) delete parent[keys.at(-1)!];
      else parent[keys.at(-1)!] = value;
      return () => parsePropagatorConfig(j);
    };
    expect(bad("loop.max_cond", 0)).toThrow(/^loop\.max_cond: must be a positive integer/);
    expect(bad("graphs.memory_encoder", undefined)).toThrow(/^graphs\.memory_encoder: /);
    expect(bad("graphs.image_encoder", "../x/model.json")).toThrow(/^graphs\.image_encoder: /);
    expect(bad("memory", "video")).toThrow(/^memory: /);
    expect(bad("normalization.std", 0)).toThrow(/^normalization\.std: /);
    expect(bad("image.min_hw", [32])).toThrow(/^image\.min_hw: /);
  });
});
