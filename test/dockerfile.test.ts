// Docker cannot run here, so this checks what can be checked statically: every path the
// Dockerfile copies from the build context exists, and every command it runs is a real script
// of the project (npm scripts exist, node entry points exist).
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..");
const dockerfile = readFileSync(join(root, "Dockerfile"), "utf8").replace(/\\\n/g, " ");
const lines = dockerfile.split("\n").map((l) => l.trim()).filter((l) => l && !l.startsWith("#"));
const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8")) as { scripts: Record<string, string> };

function execArgs(rest: string): string[] {
  const t = rest.trim();
  if (t.startsWith("[")) return JSON.parse(t) as string[];
  return t.split(/\s+/);
}

describe("Dockerfile", () => {
  it("is multi-stage with a runtime stage and a HEALTHCHECK", () => {
    expect(lines.filter((l) => /^FROM\s/i.test(l)).length).toBeGreaterThanOrEqual(2);
    expect(lines.some((l) => /^HEALTHCHECK\s/i.test(l))).toBe(true);
  });

  it("copies only paths that exist in the build context", () => {
    const copies = lines.filter((l) => /^COPY\s/i.test(l) && !/--from=/i.test(l));
    expect(copies.length).toBeGreaterThan(0);
    for (const line of copies) {
      const parts = line.split(/\s+/).slice(1).filter((p) => !p.startsWith("--"));
      for (const src of parts.slice(0, -1)) expect(existsSync(join(root, src)), `COPY ${src}`).toBe(true);
    }
  });

  it("copies from the build stage only what the build stage has", () => {
    for (const line of lines.filter((l) => /^COPY\s+--from=build/i.test(l))) {
      const src = line.split(/\s+/)[2]!;
      if (src.startsWith("/app/node_modules")) continue;
      // Build outputs exist only after the build stage's RUN that makes them.
      if (src === "/app/neuroglancer-layer/dist") {
        expect(dockerfile).toMatch(/RUN npm run build:viewer/);
        continue;
      }
      expect(existsSync(join(root, src.replace(/^\/app\//, ""))), line).toBe(true);
    }
  });

  it("runs only real npm scripts and project entry points", () => {
    const commands = lines.filter((l) => /^(RUN|CMD|HEALTHCHECK)\s/i.test(l));
    for (const line of commands) {
      for (const m of line.matchAll(/npm run ([\w:-]+)/g)) expect(pkg.scripts, line).toHaveProperty(m[1]!);
      const exec = line.replace(/^HEALTHCHECK\s+(--\S+\s+)*CMD\s+/i, "CMD ").replace(/^CMD\s+/i, "");
      if (/^(CMD|HEALTHCHECK)/i.test(line)) {
        const args = execArgs(exec);
        const entry = args.find((a) => a.endsWith(".ts") || a.endsWith(".js"));
        expect(entry, line).toBeDefined();
        expect(existsSync(join(root, entry!)), `${entry} in: ${line}`).toBe(true);
      }
    }
  });
});
