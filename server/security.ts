// Who may call the server: bearer tokens from a token file, required whenever the server binds
// beyond loopback, and TLS key material. One token per line; blank lines and # comments ignored.
import { readFile, stat } from "node:fs/promises";
import type { NextFunction, Request, Response } from "express";
import { failedPrecondition, invalidArgument, notFound } from "#src/errors.ts";
import type { Logger } from "#server/log.ts";
import { hashTokens, tokenMatches } from "#server/grpc/interceptors.ts";

export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, "").toLowerCase();
  return h === "localhost" || h === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** Reads a token file and returns the sha256 of each token (the tokens themselves are not kept). */
export async function loadTokenFile(path: string, log: Logger): Promise<Buffer[]> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw notFound("token_file", `${path} does not exist`);
    throw e;
  }
  const tokens = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  if (tokens.length === 0) throw invalidArgument("token_file", `${path} holds no token`);
  tokens.forEach((t, i) => {
    if (t.length < 16 || /\s/.test(t)) throw invalidArgument(`token_file[${i}]`, "a token must be at least 16 characters without spaces");
  });
  const mode = (await stat(path)).mode;
  if ((mode & 0o077) !== 0) log.warn({ path, mode: (mode & 0o777).toString(8) }, "token file is readable by other users; chmod 600 it");
  return hashTokens(tokens);
}

/** Refuses to serve beyond loopback without authentication. */
export function checkExposure(host: string, tokenHashes: Buffer[] | undefined): void {
  if (!isLoopback(host) && tokenHashes === undefined) {
    throw failedPrecondition(`binding to ${host} exposes the server beyond this machine: give --token-file (bearer tokens)`, "host");
  }
}

/** Express middleware: a valid `Authorization: Bearer <token>` header, except for the open paths. */
export function httpAuth(tokenHashes: Buffer[], openPaths: readonly string[]) {
  return (req: Request, res: Response, next: NextFunction): void => {
    if (openPaths.includes(req.path)) return next();
    const header = req.get("authorization");
    const token = header?.startsWith("Bearer ") ? header.slice(7).trim() : undefined;
    if (token !== undefined && tokenMatches(tokenHashes, token)) return next();
    res.status(401).set("WWW-Authenticate", "Bearer").json({ error: "a valid bearer token is required", field: "authorization" });
  };
}

export async function loadTls(certPath: string | undefined, keyPath: string | undefined): Promise<{ certChain: Buffer; privateKey: Buffer } | undefined> {
  if (certPath === undefined && keyPath === undefined) return undefined;
  if (certPath === undefined || keyPath === undefined) throw invalidArgument(certPath === undefined ? "tls_cert" : "tls_key", "TLS needs both --tls-cert and --tls-key");
  return { certChain: await readFile(certPath), privateKey: await readFile(keyPath) };
}
