// A real HTTP server on 127.0.0.1:0 serving a folder two ways: plain HTTP with Range support at
// /files/<path>, and a minimal anonymous S3 (path-style GET with Range, ListObjectsV2) at
// /s3/<bucket>/<key> where <bucket> maps to the folder. It counts requests so tests can see
// range reads and coalescing.

import { readdirSync, readFileSync, statSync } from "node:fs";
import type { Server } from "node:http";
import type { AddressInfo } from "node:net";
import * as path from "node:path";
import express from "express";
import type { Response } from "express";

export interface ObjectServer {
  /** e.g. http://127.0.0.1:PORT/files */
  httpBase: string;
  /** S3 endpoint (path style): http://127.0.0.1:PORT/s3 */
  s3Endpoint: string;
  bucket: string;
  requests: { path: string; range: string | undefined }[];
  close(): Promise<void>;
}

function sendFile(res: Response, file: string, range: string | undefined): void {
  let st;
  try {
    st = statSync(file);
  } catch {
    res.status(404).send("not found");
    return;
  }
  if (!st.isFile()) {
    res.status(404).send("not found");
    return;
  }
  const body = readFileSync(file);
  if (range === undefined) {
    res.status(200).type("application/octet-stream").send(body);
    return;
  }
  const m = /^bytes=(\d*)-(\d*)$/.exec(range);
  if (m === null) {
    res.status(416).end();
    return;
  }
  let start: number;
  let end: number;
  if (m[1] === "") {
    start = Math.max(0, body.length - Number(m[2]));
    end = body.length - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === "" ? body.length - 1 : Math.min(Number(m[2]), body.length - 1);
  }
  if (start >= body.length) {
    res.status(416).set("Content-Range", `bytes */${body.length}`).end();
    return;
  }
  res.status(206).set("Content-Range", `bytes ${start}-${end}/${body.length}`).type("application/octet-stream").send(body.subarray(start, end + 1));
}

function inside(root: string, rel: string): string | undefined {
  const p = path.resolve(root, decodeURIComponent(rel));
  return p === root || p.startsWith(root + path.sep) ? p : undefined;
}

function escapeXml(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function listObjects(root: string, prefix: string, delimiter: string | undefined, maxKeys: number, token: string | undefined): string {
  const all: string[] = [];
  const walk = (dir: string, rel: string) => {
    for (const name of readdirSync(dir).sort()) {
      const p = path.join(dir, name);
      const key = rel === "" ? name : `${rel}/${name}`;
      if (statSync(p).isDirectory()) walk(p, key);
      else all.push(key);
    }
  };
  walk(root, "");
  const keys: string[] = [];
  const prefixes = new Set<string>();
  for (const k of all.filter((k) => k.startsWith(prefix)).sort()) {
    const rest = k.slice(prefix.length);
    const cut = delimiter === undefined ? -1 : rest.indexOf(delimiter);
    if (cut >= 0) prefixes.add(prefix + rest.slice(0, cut + 1));
    else keys.push(k);
  }
  const entries = [...keys.map((k) => ({ k, p: false })), ...[...prefixes].map((k) => ({ k, p: true }))].sort((a, b) => (a.k < b.k ? -1 : 1));
  const start = token === undefined ? 0 : Number(token);
  const page = entries.slice(start, start + maxKeys);
  const truncated = start + maxKeys < entries.length;
  return [
    '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
    `<Prefix>${escapeXml(prefix)}</Prefix><KeyCount>${page.length}</KeyCount><MaxKeys>${maxKeys}</MaxKeys><IsTruncated>${truncated}</IsTruncated>`,
    ...page.map((e) => (e.p ? `<CommonPrefixes><Prefix>${escapeXml(e.k)}</Prefix></CommonPrefixes>` : `<Contents><Key>${escapeXml(e.k)}</Key><Size>0</Size></Contents>`)),
    truncated ? `<NextContinuationToken>${start + maxKeys}</NextContinuationToken>` : "",
    "</ListBucketResult>",
  ].join("");
}

/** Serves `root`; `bucket` is the S3 bucket name it answers to; `maxKeys` pages ListObjectsV2. */
export async function startObjectServer(root: string, options: { bucket?: string; maxKeys?: number } = {}): Promise<ObjectServer> {
  const bucket = options.bucket ?? "test-bucket";
  const requests: ObjectServer["requests"] = [];
  const app = express();
  app.use((req, _res, next) => {
    requests.push({ path: req.path, range: req.header("range") });
    next();
  });
  app.get(/^\/files\/(.*)$/, (req, res) => {
    const p = inside(root, (req.params as Record<string, string>)[0] ?? "");
    if (p === undefined) res.status(403).end();
    else sendFile(res, p, req.header("range"));
  });
  app.get(/^\/s3\/([^/]+)\/?(.*)$/, (req, res) => {
    const params = req.params as Record<string, string>;
    if (params[0] !== bucket) {
      res.status(404).type("application/xml").send("<Error><Code>NoSuchBucket</Code></Error>");
      return;
    }
    const key = params[1] ?? "";
    if (key === "" && req.query["list-type"] === "2") {
      const q = req.query as Record<string, string | undefined>;
      res.type("application/xml").send(listObjects(root, q.prefix ?? "", q.delimiter, options.maxKeys ?? 1000, q["continuation-token"]));
      return;
    }
    const p = inside(root, key);
    if (p === undefined) res.status(403).end();
    else sendFile(res, p, req.header("range"));
  });
  const server: Server = await new Promise((resolve) => {
    const s = app.listen(0, "127.0.0.1", () => resolve(s));
  });
  const port = (server.address() as AddressInfo).port;
  return {
    httpBase: `http://127.0.0.1:${port}/files`,
    s3Endpoint: `http://127.0.0.1:${port}/s3`,
    bucket,
    requests,
    close: () => new Promise<void>((resolve, reject) => server.close((e) => (e ? reject(e) : resolve()))),
  };
}
