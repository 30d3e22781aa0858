// Prometheus metrics of one server process (prom-client), served at GET /metrics.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { ChunkCache } from "#server/volume/chunk_cache.ts";
import type { ModelRegistry } from "#server/onnx/model_registry.ts";

export interface ServerMetrics {
  registry: Registry;
  grpcCalls: Counter<"method" | "code">;
  grpcLatency: Histogram<"method" | "code">;
}

export function createMetrics(sources: { models?: ModelRegistry; chunkCache?: ChunkCache } = {}): ServerMetrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: "spatial_sam_process_" });
  const grpcCalls = new Counter({
    name: "spatial_sam_grpc_calls_total",
    help: "gRPC calls by method and status code",
    labelNames: ["method", "code"] as const,
    registers: [registry],
  });
  const grpcLatency = new Histogram({
    name: "spatial_sam_grpc_call_seconds",
    help: "gRPC call latency (until the status is sent; whole stream for streaming calls)",
    labelNames: ["method", "code"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
    registers: [registry],
  });
  const { models, chunkCache } = sources;
  if (models !== undefined) {
    new Gauge({
      name: "spatial_sam_model_queue_length",
      help: "Requests waiting for an ONNX worker, per model",
      labelNames: ["model"] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const [model, n] of Object.entries(models.stats().queued)) this.set({ model }, n);
      },
    });
    new Gauge({
      name: "spatial_sam_model_waiting_clients",
      help: "Clients with at least one request waiting for an ONNX worker (they are served in turn)",
      registers: [registry],
      collect() {
        this.set(models.stats().waitingClients);
      },
    });
    new Gauge({
      name: "spatial_sam_onnx_workers",
      help: "ONNX worker threads by state",
      labelNames: ["state"] as const,
      registers: [registry],
      collect() {
        const s = models.stats();
        this.set({ state: "ready" }, s.ready);
        this.set({ state: "busy" }, s.busy);
      },
    });
    new Gauge({
      name: "spatial_sam_model_runs_total",
      help: "Model runs dispatched to workers since start",
      registers: [registry],
      collect() {
        this.set(models.stats().dispatched);
      },
    });
  }
  if (chunkCache !== undefined) {
    new Gauge({
      name: "spatial_sam_chunk_cache",
      help: "Volume chunk cache counters (hits, misses, bytes, entries)",
      labelNames: ["counter"] as const,
      registers: [registry],
      collect() {
        for (const [k, v] of Object.entries(chunkCache.stats())) if (typeof v === "number") this.set({ counter: k }, v);
      },
    });
  }
  return { registry, grpcCalls, grpcLatency };
}
