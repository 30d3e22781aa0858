// The `spatial-sam` command as a user runs it: a real process, real files, a real server.
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import type { ReadRegionResponse } from "#proto/spatial_sam/v1/volume.ts";
import { makeDemoVolume } from "#src/demo_volume.ts";
import { checkHealth } from "#server/grpc/health_client.ts";
import { DEMO_SHAPE_ZYX } from "#server/demo.ts";
import { collect, connect, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";

const root = join(import.meta.dirname, "..", "..");
const bin = join(root, "server", "bin", "spatial-sam.js");

function run(args: string[]) {
  return spawnSync(process.execPath, [bin, ...args], { cwd: root, encoding: "utf8", timeout: 60_000 });
}

describe("spatial-sam --help", () => {
  it.each([[], ["serve"], ["info"], ["demo"], ["eval"], ["sdf"]])("prints help for %j", (...cmd) => {
    const r = run([...cmd, "--help"]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain("Usage: spatial-sam");
  });

  it("rejects a bad option value naming it", () => {
    const r = run(["serve", "--port", "99999"]);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("--port");
  });
});

describe("spatial-sam demo (the README's main job)", () => {
  let child: ChildProcess;
  let demoDir: string;
  let out = "";

  beforeAll(async () => {
    demoDir = mkdtempSync(join(tmpdir(), "demo-"));
    child = spawn(process.execPath, [bin, "demo", "--port", "0", "--http-port", "0", "--demo-dir", demoDir, "--models", join(root, "test", "fixtures", "models")], {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"],
    });
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`demo did not start: ${out}`)), 90_000);
      child.stdout!.on("data", () => {
        if (out.includes("Stop with Ctrl+C")) {
          clearTimeout(t);
          resolve();
        }
      });
      child.once("exit", (code) => reject(new Error(`demo exited with ${code}: ${out}`)));
    });
  });

  afterAll(() => {
    child?.kill("SIGTERM");
    rmSync(demoDir, { recursive: true, force: true });
  });

  it("serves the generated demo volume; what gRPC reads equals the generator's labels", async () => {
    const address = /gRPC\s+(\S+)/.exec(out)![1]!;
    expect(await checkHealth(address)).toBe("SERVING");
    const labelsUrl = /labels\s+(\S+)/.exec(out)![1]!;
    const clients = connect(address);
    try {
      const opened = await grpcOpenVolume(clients, { url: labelsUrl });
      const info = opened.volume!;
      expect(info.format).toBe("precomputed");
      expect([info.scales[0]!.shape!.z, info.scales[0]!.shape!.y, info.scales[0]!.shape!.x]).toEqual(DEMO_SHAPE_ZYX);
      const box = { offset: { z: 20, y: 50, x: 60 }, shape: { z: 20, y: 40, x: 100 } };
      const pieces = await collect<ReadRegionResponse>(clients.volumes.readRegion({ volumeId: info.volumeId, scale: 0, box }));
      expect(pieces.length).toBeGreaterThan(1); // chunk-aligned: the box crosses chunk borders
      const expected = makeDemoVolume(DEMO_SHAPE_ZYX, 1).labels;
      const [, Y, X] = DEMO_SHAPE_ZYX;
      let voxels = 0;
      let foreground = 0;
      for (const p of pieces) {
        const o = p.box!.offset!;
        const s = p.box!.shape!;
        const d = p.data!.data;
        const got = new BigUint64Array(d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength));
        for (let z = 0; z < s.z; z++)
          for (let y = 0; y < s.y; y++)
            for (let x = 0; x < s.x; x++) {
              const v = got[(z * s.y + y) * s.x + x]!;
              expect(v).toBe(expected[((o.z + z) * Y + (o.y + y)) * X + (o.x + x)]!);
              if (v !== 0n) foreground++;
              voxels++;
            }
      }
      expect(voxels).toBe(20 * 40 * 100);
      expect(foreground).toBeGreaterThan(0);
    } finally {
      clients.close();
    }
  });

  it("info prints the demo volume's metadata", () => {
    const url = /image\s+(\S+)/.exec(out)![1]!;
    const r = run(["info", url, "--roots", demoDir, "--json"]);
    expect(r.status).toBe(0);
    const m = JSON.parse(r.stdout) as { dtype: string; scales: { shapeZyx: number[]; voxelSizeNm: number[] }[] };
    expect(m.dtype).toBe("uint8");
    expect(m.scales[0]!.shapeZyx).toEqual(DEMO_SHAPE_ZYX);
    expect(m.scales[0]!.voxelSizeNm).toEqual([8, 8, 8]);
  });

  it("sdf computes a volume's SDF blockwise and prints where it lives; a rerun reuses it", () => {
    const url = /image\s+(\S+)/.exec(out)![1]!;
    const args = ["sdf", url, "--model", "tiny_conv3d", "--models", join(root, "test", "fixtures", "models"), "--cache-dir", join(demoDir, "results"), "--roots", demoDir, "--box", "0,0,0:32,64,64"];
    const first = run(args);
    expect(first.status, first.stderr).toBe(0);
    const resultUrl = first.stdout.trim();
    expect(resultUrl).toMatch(/^precomputed:\/\/file:\/\//);
    expect(run(args).stdout.trim()).toBe(resultUrl);
    const info = run(["info", resultUrl, "--roots", demoDir, "--json"]);
    expect(JSON.parse(info.stdout).dtype).toBe("float32");
  });

  it("sdf of a volume that is not uint8 needs --intensity-window, and checks it", () => {
    const url = /image\s+(\S+)/.exec(out)![1]!;
    const common = ["--model", "tiny_conv3d", "--models", join(root, "test", "fixtures", "models"), "--cache-dir", join(demoDir, "results"), "--roots", demoDir, "--box", "0,0,0:8,16,16"];
    const first = run(["sdf", url, ...common]);
    expect(first.status, first.stderr).toBe(0);
    const float32Url = first.stdout.trim(); // the SDF itself: a float32 volume
    const missing = run(["sdf", float32Url, ...common]);
    expect(missing.status).not.toBe(0);
    expect(missing.stderr).toMatch(/--intensity-window.*float32/);
    const empty = run(["sdf", float32Url, ...common, "--intensity-window", "5,5"]);
    expect(empty.status).not.toBe(0);
    expect(empty.stderr).toContain("--intensity-window");
    const windowed = run(["sdf", float32Url, ...common, "--intensity-window", "-1,1"]);
    expect(windowed.status, windowed.stderr).toBe(0);
    expect(windowed.stdout.trim()).toMatch(/^precomputed:\/\/file:\/\//);
  });

  it("info refuses a path outside its roots with a clear message", () => {
    const r = run(["info", "zarr://file:///etc", "--roots", demoDir]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/outside the configured file roots/);
  });
});
