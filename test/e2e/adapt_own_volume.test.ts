// A user's own volume, end to end across the Python/TypeScript boundary: `python -m spatialsam adapt`
// reads the demo volume as this server writes it (Neuroglancer precomputed, image + labels, voxel
// size from its info file) with two annotated slices, `export-unet` and `export-propagator` turn
// the dual-track folder into model folders, and a real server loads both and runs a session: the
// U-Net's SDF computed on demand as the propagator's memory, one click, propagation both ways. The
// networks train for a few steps only (tiny U-Net config): this checks that the formats, manifests
// and graphs the Python side writes are what the server reads, not segmentation quality (that is
// the benchmark's and demo_models.test.ts's business).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Direction, PointLabel, type AddPromptsRequest, type AddPromptsResponse, type PropagateResponse, type StartSessionRequest, type StartSessionResponse } from "#proto/spatial_sam/v1/segmentation.ts";
import { DEMO_SHAPE_ZYX, ensureDemoVolume } from "#server/demo.ts";
import type { RunningServer } from "#server/serve.ts";
import { call, collect, connect, type Clients, grpcOpenVolume } from "#test/helpers/grpc_clients.ts";
import { startTestServer } from "#test/helpers/test_server.ts";

const root = join(import.meta.dirname, "..", "..");
const python = join(root, "models", ".venv", "bin", "python");
const demoDir = join(root, ".cache", "demo");
const [, Y, X] = DEMO_SHAPE_ZYX;
const SLICES = [16, 48];
const TINY_UNET = "base: unet3d_demo\nunet: {channels: [8, 16], pool: [[2, 2, 2]]}\ncrop_zyx: [16, 64, 64]\nema_decay: 0.0\n";

let dir: string;
let server: RunningServer;
let clients: Clients;
let imageId: string;

function spatialsam(...args: string[]): string {
  return execFileSync(python, ["-m", "spatialsam", ...args], { cwd: join(root, "models"), encoding: "utf8" });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "e2e-adapt-"));
  const layers = await ensureDemoVolume(demoDir);
  writeFileSync(join(dir, "tiny.yaml"), TINY_UNET);
  spatialsam("adapt", "--image", `precomputed://${layers.image}`, "--labels", `precomputed://file://${layers.labels}`,
    "--slices", SLICES.join(","), "--unet-config", join(dir, "tiny.yaml"), "--rounds", "0", "--bootstrap-unet-steps", "20",
    "--bootstrap-mask-steps", "2", "--threads", "2", "--out", join(dir, "adapt"), "--no-progress");
  spatialsam("export-unet", "--run", join(dir, "adapt"), "--out", join(dir, "models", "sdf_user"), "--name", "sdf_user");
  spatialsam("export-propagator", "--run", join(dir, "adapt"), "--out", join(dir, "prop"), "--name", "prop_user");
  server = await startTestServer(dir, {
    modelsDir: join(dir, "models"),
    roots: [demoDir, dir],
    intraOpThreads: 2,
    maxQueuePerModel: 64,
    propagation: { dir: join(dir, "prop"), maxSessions: 2, idleTimeoutMs: 600_000, defaultSdfModel: "sdf_user" },
  });
  clients = connect(server.grpc.address);
  const opened = await grpcOpenVolume(clients, { url: `precomputed://file://${layers.image}` });
  imageId = opened.volume!.volumeId;
}, 600_000);

afterAll(async () => {
  clients?.close();
  await server?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe("adapt on the demo volume, exported, served", () => {
  it("the manifests record the user's data and slices", () => {
    const unet = JSON.parse(readFileSync(join(dir, "models", "sdf_user", "model.json"), "utf8"));
    expect(unet.voxel_size_nm).toEqual([8, 8, 8]);
    expect(unet.training.annotated_slices).toEqual(SLICES);
    expect(unet.training.data).toContain("precomputed://");
    const prop = JSON.parse(readFileSync(join(dir, "prop", "propagator.json"), "utf8"));
    expect(prop.name).toBe("prop_user");
    expect(prop.training.annotated_slices).toEqual(SLICES);
  });

  it("a session with the exported U-Net's SDF as memory prompts and propagates", async () => {
    const [z0, z1, z] = [24, 40, 32];
    const started = await call<StartSessionRequest, StartSessionResponse>(clients.segmentation, clients.segmentation.startSession, {
      volumeId: imageId,
      box: { offset: { z: z0, y: 0, x: 0 }, shape: { z: z1 - z0, y: Y, x: X } },
      scale: 0,
      model: "prop_user",
      sdfModel: "sdf_user",
      sdfVolumeId: "",
    });
    expect(started.sessionId).not.toBe("");
    const added = await call<AddPromptsRequest, AddPromptsResponse>(clients.segmentation, clients.segmentation.addPrompts, {
      sessionId: started.sessionId,
      objectId: 3n,
      z,
      points: [{ y: Y / 2, x: X / 2, label: PointLabel.POINT_LABEL_POSITIVE }],
      clearOld: false,
    });
    // The prompted slice's mask of object 3, on the slice's grid (cropped to its bbox).
    expect(added.masks.map((m) => m.objectId)).toEqual([3n]);
    const b = added.masks[0]!.bbox!;
    expect(added.masks[0]!.data.length).toBe((b.y1 - b.y0) * (b.x1 - b.x0));
    const stream = await collect<PropagateResponse>(
      clients.segmentation.propagate({ sessionId: started.sessionId, startZ: z, direction: Direction.DIRECTION_BOTH, maxSlices: 3, objectIds: [] }),
    );
    const zs = stream.map((r) => r.z).filter((v) => v !== z);
    expect(zs.length).toBeGreaterThan(0);
    process.stdout.write(`e2e adapt: prompted mask ${added.masks[0]!.data.reduce((a, v) => a + (v ? 1 : 0), 0)} px; propagated to z ${zs.join(",")}\n`);
    expect(zs.every((v) => v >= z - 3 && v <= z + 3)).toBe(true);
  }, 300_000);
});
