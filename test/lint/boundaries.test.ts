// The folder import boundaries of STYLE.md are lint errors; this checks the rules really fire.
import { ESLint } from "eslint";
import { join } from "node:path";
import { describe, expect, it } from "vitest";

const root = join(import.meta.dirname, "..", "..");
const eslint = new ESLint({ cwd: root });

async function ruleIds(file: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath: join(root, file) });
  return (result?.messages ?? []).map((m) => m.ruleId ?? "fatal");
}

describe("folder boundaries", () => {
  it("src/ may not import node: modules", async () => {
    expect(await ruleIds("src/probe.ts", 'import { readFileSync } from "node:fs";\nexport const f = readFileSync;\n')).toContain(
      "no-restricted-imports",
    );
  });
  it("src/ may not import server/", async () => {
    expect(await ruleIds("src/probe.ts", 'import { createLogger } from "#server/log.ts";\nexport const f = createLogger;\n')).toContain(
      "no-restricted-imports",
    );
  });
  it("relative imports may not leave a folder", async () => {
    expect(await ruleIds("server/probe.ts", 'import { allocate } from "../src/dtype.ts";\nexport const f = allocate;\n')).toContain(
      "no-restricted-imports",
    );
  });
  it("the viewer layer may not import server/", async () => {
    expect(
      await ruleIds("neuroglancer-layer/probe.ts", 'import { createLogger } from "#server/log.ts";\nexport const f = createLogger;\n'),
    ).toContain("no-restricted-imports");
  });
  it("allowed imports pass", async () => {
    expect(await ruleIds("server/probe.ts", 'import { allocate } from "#src/dtype.ts";\nexport const f = allocate;\n')).toEqual([]);
  });
});
