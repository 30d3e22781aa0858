// Docker HEALTHCHECK: exits 0 when the local gRPC server reports SERVING, 1 otherwise.
import { checkHealth } from "#server/grpc/health_client.ts";

const host = process.env.SPATIAL_SAM_PROBE_HOST ?? "127.0.0.1";
const port = process.env.SPATIAL_SAM_PORT ?? "50051";
try {
  const status = await checkHealth(`${host}:${port}`);
  process.stdout.write(`${status}\n`);
  process.exit(status === "SERVING" ? 0 : 1);
} catch (e) {
  process.stdout.write(`unhealthy: ${(e as Error).message}\n`);
  process.exit(1);
}
