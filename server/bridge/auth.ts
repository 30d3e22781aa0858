// Who may use the HTTP side when it is reachable beyond loopback: the server's bearer tokens, sent
// as `Authorization: Bearer` (scripts) or, for the browser, as an HttpOnly cookie set by a login
// link (`/?token=...`), since Neuroglancer's chunk fetches and EventSource cannot add headers.
import { readFile } from "node:fs/promises";
import type { NextFunction, Request, Response } from "express";
import { invalidArgument, notFound } from "#src/errors.ts";
import type { Logger } from "#server/log.ts";
import { tokenMatches } from "#server/grpc/interceptors.ts";
import { isLoopback } from "#server/security.ts";

export const AUTH_COOKIE = "spatialsam_token";

/** The policy: loopback binds are open (only this machine's users reach them); any other needs a token. */
export function authRequired(host: string): boolean {
  return !isLoopback(host);
}

function cookieToken(req: Request): string | undefined {
  const header = req.get("cookie");
  if (header === undefined) return undefined;
  for (const part of header.split(";")) {
    const eq = part.indexOf("=");
    if (eq >= 0 && part.slice(0, eq).trim() === AUTH_COOKIE) {
      try {
        return decodeURIComponent(part.slice(eq + 1).trim());
      } catch {
        return undefined;
      }
    }
  }
  return undefined;
}

/**
 * Express middleware: a request passes with a valid bearer header or cookie (tokens compared by
 * their sha256 in constant time). A GET with `?token=<valid token>` sets the cookie and redirects to
 * the same URL without it, so the token leaves the address bar and the history; the fragment (the
 * Neuroglancer state) is kept by the browser. Everything else is 401 naming `authorization`.
 * Tokens are never logged: the request line is not logged here, and refusals log only the path.
 */
export function bridgeAuth(tokenHashes: readonly Buffer[], log: Logger, openPaths: readonly string[] = []) {
  const refuse = (req: Request, res: Response, reason: string) => {
    log.info({ path: req.path, reason }, "unauthenticated HTTP request refused");
    res
      .status(401)
      .set("WWW-Authenticate", "Bearer")
      .set("Cache-Control", "no-store")
      .json({ error: "Unauthenticated", field: "authorization", message: "authorization: a valid bearer token is required (Authorization: Bearer <token>, or open the viewer once with ?token=<token>)" });
  };
  return (req: Request, res: Response, next: NextFunction): void => {
    if (openPaths.includes(req.path)) return next();
    const url = new URL(req.originalUrl, "http://bridge.invalid");
    const queryToken = url.searchParams.get("token");
    if (queryToken !== null && (req.method === "GET" || req.method === "HEAD")) {
      if (!tokenMatches(tokenHashes, queryToken)) return refuse(req, res, "unknown token in the login link");
      url.searchParams.delete("token");
      const secure = req.secure ? "; Secure" : "";
      res.setHeader("Set-Cookie", `${AUTH_COOKIE}=${encodeURIComponent(queryToken)}; Path=/; HttpOnly; SameSite=Strict${secure}`);
      res.setHeader("Cache-Control", "no-store");
      // The same path and query, without the token.
      res.redirect(303, `${url.pathname}${url.search}`);
      return;
    }
    const header = req.get("authorization");
    if (header !== undefined) {
      const token = header.startsWith("Bearer ") ? header.slice(7).trim() : undefined;
      if (token !== undefined && tokenMatches(tokenHashes, token)) return next();
      return refuse(req, res, token === undefined ? "not a bearer authorization" : "unknown bearer token");
    }
    const cookie = cookieToken(req);
    if (cookie !== undefined && tokenMatches(tokenHashes, cookie)) return next();
    refuse(req, res, cookie === undefined ? "no token" : "unknown token in the cookie");
  };
}

/** The token the bridge presents to a remote gRPC server: the first token of a token file. */
export async function readClientToken(path: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") throw notFound("grpc_token_file", `${path} does not exist`);
    throw e;
  }
  const token = text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .find((l) => l !== "" && !l.startsWith("#"));
  if (token === undefined) throw invalidArgument("grpc_token_file", `${path} holds no token`);
  return token;
}
