// SegmentationService: interactive propagation sessions over gRPC. Prompts and masks are in the
// volume's voxel coordinates at the session's scale; the session itself works in box-local slices.
import type { Box2 } from "#proto/spatial_sam/v1/common.ts";
import {
  Direction as WireDirection,
  PointLabel,
  type ObjectMask,
  type PropagateResponse,
  type SegmentationServiceServer,
} from "#proto/spatial_sam/v1/segmentation.ts";
import { invalidArgument } from "#src/errors.ts";
import type { Box3 } from "#src/volume/types.ts";
import type { Logger } from "#server/log.ts";
import { PropagationEngine, type SdfSource } from "#server/engine/propagation/engine.ts";
import type { Direction, PointInput, PromptInput, SliceMask } from "#server/engine/propagation/session.ts";
import { clientKey, serverStreaming, unary } from "#server/grpc/handlers.ts";
import { openSdfVolume, segmentVolumeCall, type SegmentVolumeDeps } from "#server/grpc/segment_volume.ts";
import { fromWireBox } from "#server/grpc/convert.ts";
import type { VolumeRegistry } from "#server/grpc/volume_service.ts";

const DIRECTIONS: Record<WireDirection, Direction | undefined> = {
  // Unset is forward, the predictor's default.
  [WireDirection.DIRECTION_UNSPECIFIED]: "forward",
  [WireDirection.DIRECTION_FORWARD]: "forward",
  [WireDirection.DIRECTION_BACKWARD]: "backward",
  [WireDirection.DIRECTION_BOTH]: "both",
};

const sigmoid = (v: number) => 1 / (1 + Math.exp(-v));

/** A mask cropped to its bounding box, in volume coordinates (no pixels: empty box and data). */
export function toWireMask(m: SliceMask, box: Box3): ObjectMask {
  const [, y, x] = box.shapeZyx;
  let y0 = y;
  let x0 = x;
  let y1 = -1;
  let x1 = -1;
  for (let r = 0; r < y; r++) {
    for (let c = 0; c < x; c++) {
      if (m.mask[r * x + c]) {
        if (r < y0) y0 = r;
        if (r > y1) y1 = r;
        if (c < x0) x0 = c;
        if (c > x1) x1 = c;
      }
    }
  }
  const base = { objectId: m.objectId, z: m.z + box.offsetZyx[0], iouScore: m.iou, objectScore: sigmoid(m.objectScore) };
  if (y1 < 0) return { ...base, bbox: { y0: 0, x0: 0, y1: 0, x1: 0 }, data: Buffer.alloc(0) };
  const w = x1 - x0 + 1;
  const data = Buffer.alloc((y1 - y0 + 1) * w);
  for (let r = y0; r <= y1; r++) data.set(m.mask.subarray(r * x + x0, r * x + x1 + 1), (r - y0) * w);
  const [, oy, ox] = box.offsetZyx;
  return { ...base, bbox: { y0: y0 + oy, x0: x0 + ox, y1: y1 + 1 + oy, x1: x1 + 1 + ox }, data };
}

function localZ(z: number, box: Box3, field: string): number {
  const z0 = box.offsetZyx[0];
  if (!Number.isInteger(z) || z < z0 || z >= z0 + box.shapeZyx[0]) {
    throw invalidArgument(field, `${z} lies outside the session box's slices [${z0}, ${z0 + box.shapeZyx[0]})`);
  }
  return z - z0;
}

/** A half-open Box2 inside the session slice, as local [y0, x0, y1, x1). */
function localBox2(b: Box2, box: Box3, field: string): [number, number, number, number] {
  const [, oy, ox] = box.offsetZyx;
  const [, sy, sx] = box.shapeZyx;
  const v = [b.y0 - oy, b.x0 - ox, b.y1 - oy, b.x1 - ox] as [number, number, number, number];
  if (!(v[0] >= 0 && v[1] >= 0 && v[0] < v[2] && v[1] < v[3] && v[2] <= sy && v[3] <= sx)) {
    throw invalidArgument(field, `[y0 ${b.y0}, x0 ${b.x0}, y1 ${b.y1}, x1 ${b.x1}) must be non-empty and inside the session box's slice [${oy}, ${ox}, ${oy + sy}, ${ox + sx})`);
  }
  return v;
}

export interface SegmentationServiceOptions {
  volumes: VolumeRegistry;
  engine: PropagationEngine;
  log: Logger;
  /** SegmentVolume's SDF engine, result opener and writable folders (see segment_volume.ts). */
  segment?: Omit<SegmentVolumeDeps, "volumes" | "engine">;
}

export function segmentationService({ volumes, engine, log, segment }: SegmentationServiceOptions): SegmentationServiceServer {
  return {
    startSession: unary("StartSession", log, async (req, ctx) => {
      engine.propagatorNamed(req.model, "model");
      const { source, url, intensity } = volumes.get(req.volumeId);
      const box = fromWireBox(req.box, "box");
      PropagationEngine.checkBox(source, box, req.scale);
      let sdf: SdfSource;
      if (req.sdfVolumeId !== "") {
        sdf = { kind: "volume", volume: openSdfVolume(volumes, req.sdfVolumeId, box, req.scale).source };
      } else {
        const model = req.sdfModel || engine.defaultSdfModel;
        if (model === undefined) throw invalidArgument("sdf_model", "is required: this server has no default SDF model (or pass sdf_volume_id)");
        if (!engine.hasSdfModel(model)) throw invalidArgument("sdf_model", `no SDF model ${JSON.stringify(model)} on this server`);
        sdf = { kind: "model", model, volumeKey: url };
      }
      const startZ = req.startZ === undefined ? undefined : localZ(req.startZ, box, "start_z");
      return {
        sessionId: await engine.start({
          volume: source,
          volumeKey: url,
          ...(intensity === undefined ? {} : { intensity }),
          box,
          scale: req.scale,
          sdf,
          model: req.model,
          ...(startZ === undefined ? {} : { startZ, client: clientKey(ctx) }),
        }),
      };
    }),

    addPrompts: unary("AddPrompts", log, async (req, ctx) =>
      engine.use(req.sessionId, async (session, box) => {
        const z = localZ(req.z, box, "z");
        const [, oy, ox] = box.offsetZyx;
        const [, sy, sx] = box.shapeZyx;
        const points: PointInput[] = req.points.map((p, i) => {
          for (const [axis, v, lo, n] of [["x", p.x, ox, sx], ["y", p.y, oy, sy]] as const) {
            if (!Number.isFinite(v)) throw invalidArgument(`points[${i}].${axis}`, `must be a finite number, got ${v}`);
            if (v < lo || v > lo + n - 1) throw invalidArgument(`points[${i}].${axis}`, `${v} lies outside the session box's slice [${lo}, ${lo + n - 1}]`);
          }
          if (p.label !== PointLabel.POINT_LABEL_POSITIVE && p.label !== PointLabel.POINT_LABEL_NEGATIVE) {
            throw invalidArgument(`points[${i}].label`, "must be POINT_LABEL_POSITIVE or POINT_LABEL_NEGATIVE");
          }
          return { x: p.x - ox, y: p.y - oy, label: p.label === PointLabel.POINT_LABEL_POSITIVE ? 1 : 0 };
        });
        const prompt: PromptInput = { points, clearOld: req.clearOld };
        if (req.box !== undefined) {
          const [y0, x0, y1, x1] = localBox2(req.box, box, "box");
          // The predictor's box is corner pixels, both included; the wire's is half-open.
          if (y1 - y0 < 2 || x1 - x0 < 2) throw invalidArgument("box", "must span at least 2 pixels on each axis");
          prompt.box = [x0, y0, x1 - 1, y1 - 1];
        }
        if (req.mask !== undefined) {
          if (req.mask.box === undefined) throw invalidArgument("mask.box", "is required");
          const [y0, x0, y1, x1] = localBox2(req.mask.box, box, "mask.box");
          const w = x1 - x0;
          if (req.mask.data.length !== (y1 - y0) * w) {
            throw invalidArgument("mask.data", `has ${req.mask.data.length} bytes; mask.box needs ${(y1 - y0) * w}`);
          }
          const full = new Uint8Array(sy * sx);
          for (let r = y0; r < y1; r++) {
            for (let c = x0; c < x1; c++) full[r * sx + c] = req.mask.data[(r - y0) * w + (c - x0)] ? 1 : 0;
          }
          prompt.mask = full;
        }
        const client = clientKey(ctx, req.sessionId);
        const masks = await session.addPrompts(req.objectId, z, prompt, ctx.signal, client);
        // The user is likely to propagate from here or click a neighbour next.
        engine.prefetch(req.sessionId, z, client);
        return { masks: masks.map((m) => toWireMask(m, box)) };
      }),
    ),

    propagate: serverStreaming("Propagate", log, (req, ctx) =>
      engine.useStream(req.sessionId, async function* (session, box): AsyncGenerator<PropagateResponse> {
        const direction = DIRECTIONS[req.direction];
        if (direction === undefined) throw invalidArgument("direction", `unknown direction ${String(req.direction)}`);
        const stream = session.propagate({
          direction,
          signal: ctx.signal,
          client: clientKey(ctx, req.sessionId),
          objectIds: req.objectIds,
          ...(req.startZ === undefined ? {} : { startZ: localZ(req.startZ, box, "start_z") }),
          ...(req.maxSlices === 0 ? {} : { maxSlices: req.maxSlices }),
        });
        for await (const { z, masks } of stream) {
          yield { z: z + box.offsetZyx[0], masks: masks.map((m) => toWireMask(m, box)) };
        }
      }),
    ),

    removeObject: unary("RemoveObject", log, async (req) => {
      await engine.use(req.sessionId, (session) => session.removeObject(req.objectId));
      return {};
    }),

    resetSession: unary("ResetSession", log, async (req) => {
      await engine.use(req.sessionId, (session) => session.reset());
      return {};
    }),

    closeSession: unary("CloseSession", log, async (req) => {
      await engine.close(req.sessionId);
      return {};
    }),

    segmentVolume: serverStreaming("SegmentVolume", log, segmentVolumeCall({ volumes, engine, ...segment })),
  };
}
