// Adapters from async handlers to grpc-js's callback API. Handlers are `async` (or async
// generators for server streaming) and throw; these adapters own the single callback/end, the
// AbortSignal that fires when the client cancels or its deadline passes, and stream backpressure.
import type {
  handleServerStreamingCall,
  handleUnaryCall,
  Metadata,
  ServerUnaryCall,
  ServerWritableStream,
} from "@grpc/grpc-js";
import { createHash } from "node:crypto";
import { SpatialSamError } from "#src/errors.ts";
import type { Logger } from "#server/log.ts";
import { toServiceError } from "#server/grpc/status.ts";

export interface CallContext {
  /** Fires when the client cancels, disconnects, or the call's deadline passes. */
  signal: AbortSignal;
  metadata: Metadata;
  peer: string;
  /**
   * `token:<sha256 prefix>` of the call's bearer token (never the token), undefined without one.
   * With auth on it names an accepted token; with auth off it is what the client says it is, which
   * is enough for its one use, a scheduling key.
   */
  principal: string | undefined;
  log: Logger;
}

/**
 * The key the ONNX pool schedules this call's model runs under (clients take turns): the token's
 * principal, else the session the call works on, else the connection's peer address.
 */
export function clientKey(ctx: CallContext, sessionId?: string): string {
  if (ctx.principal !== undefined) return ctx.principal;
  return sessionId ? `session:${sessionId}` : `peer:${ctx.peer}`;
}

function principalOf(metadata: Metadata): string | undefined {
  const header = metadata.get("authorization")[0];
  if (typeof header !== "string" || !header.startsWith("Bearer ")) return undefined;
  return `token:${createHash("sha256").update(header.slice(7).trim()).digest("hex").slice(0, 16)}`;
}

type AnyCall = ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>;

function callSignal(call: AnyCall): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onCancel = () => controller.abort(new SpatialSamError("Cancelled", "the client cancelled the call"));
  call.on("cancelled", onCancel);
  let timer: NodeJS.Timeout | undefined;
  const deadline = call.getDeadline();
  const ms = deadline instanceof Date ? deadline.getTime() - Date.now() : Number(deadline) - Date.now();
  if (Number.isFinite(ms)) {
    timer = setTimeout(
      () => controller.abort(new SpatialSamError("DeadlineExceeded", "the call's deadline passed")),
      Math.max(0, ms),
    );
  }
  return {
    signal: controller.signal,
    dispose: () => {
      call.off("cancelled", onCancel);
      if (timer) clearTimeout(timer);
    },
  };
}

function context(call: AnyCall, log: Logger, signal: AbortSignal, method: string): CallContext {
  return { signal, metadata: call.metadata, peer: call.getPeer(), principal: principalOf(call.metadata), log: log.child({ method }) };
}

export function unary<Req, Res>(
  method: string,
  log: Logger,
  fn: (request: Req, ctx: CallContext) => Promise<Res>,
): handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const { signal, dispose } = callSignal(call as AnyCall);
    const started = performance.now();
    fn(call.request, context(call as AnyCall, log, signal, method)).then(
      (response) => {
        dispose();
        log.debug({ method, ms: performance.now() - started }, "ok");
        callback(null, response);
      },
      (e: unknown) => {
        dispose();
        callback(toServiceError(signal.aborted && !(e instanceof SpatialSamError) ? signal.reason : e, log, method));
      },
    );
  };
}

export function serverStreaming<Req, Res>(
  method: string,
  log: Logger,
  fn: (request: Req, ctx: CallContext) => AsyncIterable<Res>,
): handleServerStreamingCall<Req, Res> {
  return (call) => {
    const { signal, dispose } = callSignal(call as AnyCall);
    void (async () => {
      try {
        for await (const message of fn(call.request, context(call as AnyCall, log, signal, method))) {
          if (signal.aborted) break;
          if (!call.write(message)) {
            await new Promise<void>((resolve) => {
              const done = () => {
                call.off("drain", done);
                signal.removeEventListener("abort", done);
                resolve();
              };
              call.on("drain", done);
              signal.addEventListener("abort", done);
            });
          }
        }
        if (!signal.aborted) call.end();
      } catch (e) {
        if (!signal.aborted) call.emit("error", toServiceError(e, log, method));
        else log.info({ method, reason: String(signal.reason) }, "stream stopped: call cancelled");
      } finally {
        dispose();
      }
    })();
  };
}
