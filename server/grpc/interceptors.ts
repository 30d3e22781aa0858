// Cross-cutting call policy, applied to every RPC before its handler: bearer-token
// authentication (health checks stay open, so load balancers and Docker can probe) and
// Prometheus request metrics (count and latency by method and status code).
import { createHash, timingSafeEqual } from "node:crypto";
import { ServerInterceptingCall, status, type ServerInterceptor } from "@grpc/grpc-js";
import type { Logger } from "#server/log.ts";
import type { ServerMetrics } from "#server/metrics.ts";

const OPEN_PREFIXES = ["/grpc.health.v1.Health/"];

/** Compares a presented token against the accepted ones in constant time per candidate. */
export function tokenMatches(accepted: readonly Buffer[], presented: string): boolean {
  const p = createHash("sha256").update(presented).digest();
  let ok = false;
  for (const a of accepted) ok = timingSafeEqual(a, p) || ok;
  return ok;
}

export function hashTokens(tokens: readonly string[]): Buffer[] {
  return tokens.map((t) => createHash("sha256").update(t).digest());
}

export function authInterceptor(acceptedHashes: readonly Buffer[], log: Logger): ServerInterceptor {
  return (method, call) =>
    new ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata, nextMetadata) => {
            if (OPEN_PREFIXES.some((p) => method.path.startsWith(p))) return nextMetadata(metadata);
            const header = metadata.get("authorization")[0];
            const token = typeof header === "string" && header.startsWith("Bearer ") ? header.slice(7).trim() : undefined;
            if (token === undefined || !tokenMatches(acceptedHashes, token)) {
              log.warn({ method: method.path, peer: call.getPeer(), reason: token === undefined ? "no bearer token" : "unknown token" }, "unauthenticated call refused");
              call.sendStatus({ code: status.UNAUTHENTICATED, details: "a valid bearer token is required (metadata authorization: Bearer <token>)" });
              return;
            }
            nextMetadata(metadata);
          },
        });
      },
    });
}

export function metricsInterceptor(metrics: ServerMetrics): ServerInterceptor {
  return (method, call) => {
    const end = metrics.grpcLatency.startTimer({ method: method.path });
    return new ServerInterceptingCall(call, {
      sendStatus: (s, next) => {
        const code = status[s.code] ?? String(s.code);
        end({ code });
        metrics.grpcCalls.inc({ method: method.path, code });
        next(s);
      },
    });
  };
}
