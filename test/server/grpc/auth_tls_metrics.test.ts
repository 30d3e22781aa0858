// A shared server: bearer-token auth on every call but health, TLS, and Prometheus counters,
// against a real server over real sockets.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ModelServiceClient, type ListModelsResponse } from "#proto/spatial_sam/v1/model.ts";
import { silentLogger } from "#server/log.ts";
import { createMetrics } from "#server/metrics.ts";
import { checkExposure, isLoopback, loadTokenFile } from "#server/security.ts";
import { startGrpcServer, type RunningGrpcServer } from "#server/grpc/server.ts";
import { checkHealth } from "#server/grpc/health_client.ts";

const TOKEN = "s3cret-token-for-tests-0123456789";
let dir: string;
let server: RunningGrpcServer;
let tlsServer: RunningGrpcServer;
let cert: Buffer;
const metrics = createMetrics();

const backend = {
  describe: () => [],
  run: async () => ({}),
};

function listModels(client: ModelServiceClient, token?: string): Promise<ListModelsResponse> {
  const md = new Metadata();
  if (token !== undefined) md.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => client.listModels({}, md, (e, r) => (e ? reject(e) : resolve(r))));
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "auth-"));
  const tokenFile = join(dir, "tokens");
  writeFileSync(tokenFile, `# team tokens\n${TOKEN}\n\nanother-token-abcdefghijkl\n`);
  chmodSync(tokenFile, 0o600);
  const tokenHashes = await loadTokenFile(tokenFile, silentLogger());
  server = await startGrpcServer({
    host: "127.0.0.1",
    port: 0,
    models: backend,
    openVolume: async () => {
      throw new Error("unused");
    },
    log: silentLogger(),
    tokenHashes,
    metrics,
  });
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", join(dir, "key.pem"), "-out", join(dir, "cert.pem"), "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], { stdio: "ignore" });
  cert = readFileSync(join(dir, "cert.pem"));
  tlsServer = await startGrpcServer({
    host: "127.0.0.1",
    port: 0,
    models: backend,
    openVolume: async () => {
      throw new Error("unused");
    },
    log: silentLogger(),
    tls: { certChain: cert, privateKey: readFileSync(join(dir, "key.pem")) },
  });
});

afterAll(async () => {
  await server?.close();
  await tlsServer?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe("bearer tokens", () => {
  it("refuses calls without a token or with a wrong one, accepts a listed token, leaves health open", async () => {
    const client = new ModelServiceClient(server.address, credentials.createInsecure());
    try {
      const none = (await listModels(client).catch((e: ServiceError) => e)) as ServiceError;
      expect(none.code).toBe(status.UNAUTHENTICATED);
      const wrong = (await listModels(client, "not-the-token-0000000000").catch((e: ServiceError) => e)) as ServiceError;
      expect(wrong.code).toBe(status.UNAUTHENTICATED);
      await expect(listModels(client, TOKEN)).resolves.toEqual({ models: [] });
      await expect(listModels(client, "another-token-abcdefghijkl")).resolves.toEqual({ models: [] });
      expect(await checkHealth(server.address)).toBe("SERVING");
    } finally {
      client.close();
    }
  });

  it("counts calls by method and status code for Prometheus", async () => {
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/spatial_sam_grpc_calls_total\{method="\/spatial_sam.v1.ModelService\/ListModels",code="UNAUTHENTICATED"\} 2/);
    expect(text).toMatch(/spatial_sam_grpc_calls_total\{method="\/spatial_sam.v1.ModelService\/ListModels",code="OK"\} 2/);
    expect(text).toContain("spatial_sam_grpc_call_seconds_bucket");
  });

  it("refuses to bind beyond loopback without tokens", () => {
    expect(isLoopback("127.0.0.1")).toBe(true);
    expect(isLoopback("::1")).toBe(true);
    expect(isLoopback("0.0.0.0")).toBe(false);
    expect(() => checkExposure("0.0.0.0", undefined)).toThrow(/token-file/);
    expect(() => checkExposure("0.0.0.0", [Buffer.alloc(32)])).not.toThrow();
  });

  it("rejects a token file with no usable token, naming it", async () => {
    const f = join(dir, "empty");
    writeFileSync(f, "# nothing\n\n");
    await expect(loadTokenFile(f, silentLogger())).rejects.toMatchObject({ field: "token_file" });
    writeFileSync(f, "short\n");
    await expect(loadTokenFile(f, silentLogger())).rejects.toMatchObject({ field: "token_file[0]" });
  });
});

describe("TLS", () => {
  it("serves over TLS to a client that trusts the certificate, and not in plaintext", async () => {
    const secure = new ModelServiceClient(tlsServer.address.replace("127.0.0.1", "localhost"), credentials.createSsl(cert));
    const plain = new ModelServiceClient(tlsServer.address, credentials.createInsecure());
    try {
      await expect(listModels(secure)).resolves.toEqual({ models: [] });
      const e = (await new Promise<ServiceError>((resolve) =>
        plain.listModels({}, new Metadata(), { deadline: Date.now() + 3000 }, (err) => resolve(err!)),
      )) as ServiceError;
      expect(e.code).not.toBe(status.OK);
    } finally {
      secure.close();
      plain.close();
    }
  });
});
