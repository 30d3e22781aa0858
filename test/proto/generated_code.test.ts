// The generated TypeScript bindings are committed; this regenerates them from proto/ with the
// pinned buf + ts-proto and fails on any difference, so the contract and its code cannot drift.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { afterAll, describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..", "..");
const protoDir = join(root, "proto");

function listFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? listFiles(p) : [p];
  });
}

describe("proto/gen", () => {
  const out = mkdtempSync(join(tmpdir(), "proto-gen-"));
  afterAll(() => rmSync(out, { recursive: true, force: true }));

  it("lints with buf", () => {
    execFileSync(join(root, "node_modules", ".bin", "buf"), ["lint"], { cwd: protoDir, stdio: "pipe" });
  });

  it("matches a fresh generation", () => {
    execFileSync(join(root, "node_modules", ".bin", "buf"), ["generate", "--output", out], { cwd: protoDir, stdio: "pipe" });
    const fresh = listFiles(join(out, "gen")).map((p) => relative(join(out, "gen"), p)).sort();
    const committed = listFiles(join(protoDir, "gen")).map((p) => relative(join(protoDir, "gen"), p)).sort();
    expect(committed).toEqual(fresh);
    for (const f of fresh) {
      expect(readFileSync(join(protoDir, "gen", f), "utf8"), `proto/gen/${f} is stale: run npm run proto:gen`).toBe(
        readFileSync(join(out, "gen", f), "utf8"),
      );
    }
  });
});
