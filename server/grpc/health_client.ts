// A client for the standard grpc.health.v1 service (used by the Docker HEALTHCHECK and tests).
import { credentials, makeClientConstructor, type ServiceError } from "@grpc/grpc-js";
import { service as healthService } from "grpc-health-check";

export type ServingStatus = "UNKNOWN" | "SERVING" | "NOT_SERVING" | "SERVICE_UNKNOWN";

interface HealthClient {
  check(
    req: { service: string },
    options: { deadline: number },
    cb: (err: ServiceError | null, res?: { status: ServingStatus }) => void,
  ): void;
  close(): void;
}

const HealthClientCtor = makeClientConstructor(healthService, "grpc.health.v1.Health") as unknown as new (
  address: string,
  creds: ReturnType<typeof credentials.createInsecure>,
) => HealthClient;

/** Asks `address` ("host:port") for the status of `service` ("" = the whole server). */
export async function checkHealth(address: string, service = "", timeoutMs = 3_000): Promise<ServingStatus> {
  const client = new HealthClientCtor(address, credentials.createInsecure());
  try {
    return await new Promise<ServingStatus>((resolve, reject) =>
      client.check({ service }, { deadline: Date.now() + timeoutMs }, (err, res) => (err ? reject(err) : resolve(res!.status))),
    );
  } finally {
    client.close();
  }
}
