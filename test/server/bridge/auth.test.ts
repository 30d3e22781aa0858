// The HTTP side beyond loopback: serve() bound to a non-loopback address of this machine (0.0.0.0
// where it has none) with a token file. Requests without a token are 401 naming `authorization`;
// a bearer header works; a `?token=` login link sets an HttpOnly SameSite=Strict cookie and
// redirects without the token; with that cookie alone the viewer's own requests work (info, chunks,
// a live session over the server's token-protected gRPC, its event stream); no token reaches the
// log. And the bridge reaches a remote gRPC server over TLS with a bearer token.
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { networkInterfaces, tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import express from "express";
import { pino } from "pino";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { Vec3 } from "#src/volume/types.ts";
import { AUTH_COOKIE, authRequired } from "#server/bridge/auth.ts";
import { createBridge, type Bridge } from "#server/bridge/bridge.ts";
import { silentLogger } from "#server/log.ts";
import { serve, type RunningServer } from "#server/serve.ts";
import { readNpy } from "#test/helpers/npy.ts";
import { writePrecomputedArray } from "#test/helpers/precomputed_array.ts";

const root = join(import.meta.dirname, "..", "..", "..");
const golden = join(root, "test", "fixtures", "propagator");
const [Z, Y, X] = readNpy(join(golden, "image.npy")).shape as Vec3;
const CHUNK_ZYX: Vec3 = [4, 32, 32];
const TOKEN = "tok-0123456789abcdef-secret";
const WRONG = "tok-wrong-wrong-wrong-secret";

/** A non-loopback IPv4 address of this machine, or 0.0.0.0 (any address) when it has none. */
const host = Object.values(networkInterfaces())
  .flat()
  .find((a) => a !== undefined && a.family === "IPv4" && !a.internal)?.address ?? "0.0.0.0";

let dir: string;
let server: RunningServer;
let base: string;
const logLines: string[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "bridge-auth-test-"));
  const tokenFile = join(dir, "tokens");
  writeFileSync(tokenFile, `# bridge test\n${TOKEN}\n`);
  chmodSync(tokenFile, 0o600);
  const image = await writePrecomputedArray(dir, "image", "uint8", readNpy(join(golden, "image.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX });
  const sdf = await writePrecomputedArray(dir, "sdf", "float32", readNpy(join(golden, "sdf.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX });
  // Everything the server logs, at debug level, to look for the token in.
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      logLines.push(chunk.toString());
      cb();
    },
  });
  server = await serve({
    host,
    port: 0,
    httpPort: 0,
    modelsDir: join(root, "test", "fixtures", "models"),
    roots: [dir],
    cacheDir: join(dir, "cache"),
    workers: 1,
    intraOpThreads: 1,
    executionProvider: "cpu",
    maxQueuePerModel: 4,
    log: pino({ level: "debug" }, sink),
    tokenFile,
    propagation: { dir: join(golden, "model"), maxSessions: 4 },
    bridge: { volumes: [{ id: "image", url: image }, { id: "sdf", url: sdf }], live: { sdfVolumes: { image: "sdf" } } },
  });
  base = `http://${host === "0.0.0.0" ? "127.0.0.1" : host}:${server.httpPort}`;
}, 60_000);

afterAll(async () => {
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const get = (path: string, headers: Record<string, string> = {}) => fetch(`${base}${path}`, { headers, redirect: "manual" });

describe("bridge authentication", () => {
  it("the policy: loopback is open, any other address needs a token", () => {
    for (const h of ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]) expect(authRequired(h), h).toBe(false);
    for (const h of ["0.0.0.0", "::", "192.0.2.2", "10.0.0.1", "example.org"]) expect(authRequired(h), h).toBe(true);
  });

  it("refuses requests without a valid token with 401 naming authorization; a bearer header passes", async () => {
    expect(host).not.toBe("127.0.0.1");
    for (const [method, path] of [
      ["GET", "/"],
      ["GET", "/api/viewer/state"],
      ["GET", "/api/volumes"],
      ["GET", "/volumes/image/info"],
      ["GET", `/volumes/image/${"0-32_0-32_0-4"}`],
      ["POST", "/api/sessions"],
      ["GET", "/metrics"],
    ] as const) {
      const res = await fetch(`${base}${path}`, { method, headers: { "Content-Type": "application/json" }, ...(method === "POST" ? { body: JSON.stringify({ volumeId: "image" }) } : {}) });
      expect(res.status, path).toBe(401);
      expect(res.headers.get("www-authenticate")).toBe("Bearer");
      expect(((await res.json()) as { field: string }).field).toBe("authorization");
    }
    expect((await get("/api/volumes", { Authorization: `Bearer ${WRONG}` })).status).toBe(401);
    expect((await get("/api/volumes", { Authorization: `Basic ${TOKEN}` })).status).toBe(401);
    expect((await get("/api/volumes", { Cookie: `${AUTH_COOKIE}=${WRONG}` })).status).toBe(401);
    expect((await get("/api/volumes", { Authorization: `Bearer ${TOKEN}` })).status).toBe(200);
    expect((await get("/healthz")).status).toBe(200);
  });

  it("a ?token= login link sets an HttpOnly SameSite=Strict cookie and redirects without the token; the cookie alone opens the viewer's requests", async () => {
    const bad = await get(`/?token=${WRONG}`);
    expect(bad.status).toBe(401);
    expect(bad.headers.get("set-cookie")).toBeNull();

    const login = await get(`/?layout=xy&token=${TOKEN}`);
    expect(login.status).toBe(303);
    expect(login.headers.get("location")).toBe("/?layout=xy");
    const setCookie = login.headers.get("set-cookie")!;
    expect(setCookie).toContain(`${AUTH_COOKIE}=${TOKEN}`);
    expect(setCookie).toContain("HttpOnly");
    expect(setCookie).toContain("SameSite=Strict");
    expect(setCookie).toContain("Path=/");
    const cookie = { Cookie: setCookie.split(";")[0]! };

    expect((await get("/api/viewer/state", cookie)).status).toBe(200);
    expect((await get("/volumes/image/info", cookie)).status).toBe(200);
    const info = (await (await get("/volumes/image/info", cookie)).json()) as { scales: { key: string }[] };
    expect((await get(`/volumes/image/${info.scales[0]!.key}/0-32_0-32_0-4`, cookie)).status).toBe(200);
    // A live session: the bridge calls the server's own gRPC port, which requires the token too.
    const created = await fetch(`${base}/api/sessions`, { method: "POST", headers: { ...cookie, "Content-Type": "application/json" }, body: JSON.stringify({ volumeId: "image" }) });
    expect(created.status).toBe(201);
    const { sessionId } = (await created.json()) as { sessionId: string };
    const abort = new AbortController();
    const events = await fetch(`${base}/api/sessions/${sessionId}/events`, { headers: cookie, signal: abort.signal });
    expect(events.status).toBe(200);
    expect(events.headers.get("content-type")).toBe("text/event-stream");
    abort.abort();
    const prompt = await fetch(`${base}/api/sessions/${sessionId}/prompts`, {
      method: "POST",
      headers: { ...cookie, "Content-Type": "application/json" },
      body: JSON.stringify({ objectId: "1", z: 4, points: [{ x: 20, y: 20, label: "positive" }] }),
    });
    expect(prompt.status).toBe(200);
  });

  it("never writes a token to the log", () => {
    const log = logLines.join("");
    expect(log).toContain("unauthenticated HTTP request refused");
    expect(log).not.toContain(TOKEN);
    expect(log).not.toContain(WRONG);
  });
});

describe("the bridge as a client of a remote gRPC server over TLS with a token", () => {
  let remote: RunningServer;
  let tlsDir: string;
  let image: string;

  beforeAll(async () => {
    tlsDir = mkdtempSync(join(tmpdir(), "bridge-grpc-tls-"));
    execFileSync("openssl", [
      "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
      "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
      "-keyout", join(tlsDir, "key.pem"), "-out", join(tlsDir, "cert.pem"),
    ], { stdio: "ignore" });
    writeFileSync(join(tlsDir, "tokens"), `${TOKEN}\n`, { mode: 0o600 });
    image = await writePrecomputedArray(tlsDir, "image", "uint8", readNpy(join(golden, "image.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX });
    await writePrecomputedArray(tlsDir, "sdf", "float32", readNpy(join(golden, "sdf.npy")).data, [Z, Y, X], [5, 5, 5], { chunkZyx: CHUNK_ZYX });
    remote = await serve({
      host: "127.0.0.1",
      port: 0,
      httpPort: -1,
      modelsDir: join(root, "test", "fixtures", "models"),
      roots: [tlsDir],
      cacheDir: join(tlsDir, "cache"),
      workers: 1,
      intraOpThreads: 1,
      executionProvider: "cpu",
      maxQueuePerModel: 4,
      log: silentLogger(),
      tokenFile: join(tlsDir, "tokens"),
      tlsCert: join(tlsDir, "cert.pem"),
      tlsKey: join(tlsDir, "key.pem"),
      propagation: { dir: join(golden, "model"), maxSessions: 4 },
    });
  }, 60_000);

  afterAll(async () => {
    await remote?.close();
    if (tlsDir) rmSync(tlsDir, { recursive: true, force: true });
  });

  /** A bridge of its own in front of the remote server, with these client credentials; the status of a session start. */
  async function startSession(live: { grpcToken?: string; grpcTlsCa?: Buffer }): Promise<{ status: number; field?: string }> {
    const bridge: Bridge = await createBridge({
      roots: [tlsDir],
      log: silentLogger(),
      volumes: [{ id: "image", url: image }, { id: "sdf", url: `precomputed://file://${join(tlsDir, "sdf")}` }],
      live: { grpcTarget: remote.grpc.address.replace("127.0.0.1", "localhost"), sdfVolumes: { image: "sdf" }, ...live },
    });
    const app = express();
    app.use(bridge.router);
    const http: Server = createServer(app);
    await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
    const a = http.address();
    try {
      const res = await fetch(`http://127.0.0.1:${typeof a === "object" && a !== null ? a.port : 0}/api/sessions`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ volumeId: "image" }),
      });
      const body = (await res.json()) as { field?: string };
      return { status: res.status, ...(body.field === undefined ? {} : { field: body.field }) };
    } finally {
      http.closeAllConnections();
      await new Promise<void>((resolve) => http.close(() => resolve()));
      await bridge.close();
    }
  }

  it("starts a session with the CA and the token; without the token the server refuses (401); without the CA it is unreachable (503)", async () => {
    const ca = readFileSync(join(tlsDir, "cert.pem"));
    expect((await startSession({ grpcToken: TOKEN, grpcTlsCa: ca })).status).toBe(201);
    expect((await startSession({ grpcTlsCa: ca })).status).toBe(401);
    expect((await startSession({ grpcToken: WRONG, grpcTlsCa: ca })).status).toBe(401);
    expect((await startSession({ grpcToken: TOKEN })).status).toBe(503);
  }, 60_000);
});
