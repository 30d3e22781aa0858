// SegmentVolume: automatic segmentation of a box over gRPC. Validates the request (errors name the
// wire field), runs the engine's segmentVolume and streams its progress, coalesced to the latest
// state whenever the client reads slower than progress arrives; the last message has done = true.
import type { SegmentVolumeRequest, SegmentVolumeResponse } from "#proto/spatial_sam/v1/segmentation.ts";
import { DATA_TYPES } from "#src/dtype.ts";
import { invalidArgument, notFound, SpatialSamError } from "#src/errors.ts";
import type { Box3, VolumeSource } from "#src/volume/types.ts";
import { openOutput } from "#server/engine/auto/output.ts";
import { checkSegmentBox, segmentVolume, type AutoSdfSource, type SegmentProgress } from "#server/engine/auto/segment.ts";
import { PropagationEngine } from "#server/engine/propagation/engine.ts";
import type { SdfEngine } from "#server/engine/sdf_engine.ts";
import { clientKey, type CallContext } from "#server/grpc/handlers.ts";
import { fromWireBox } from "#server/grpc/convert.ts";
import type { VolumeRegistry } from "#server/grpc/volume_service.ts";

export interface SegmentVolumeDeps {
  volumes: VolumeRegistry;
  engine: PropagationEngine;
  /** Computes the SDF when the request names an SDF model. */
  sdf?: SdfEngine;
  /** Opens the SdfEngine's result URLs. */
  openVolume?: (url: string) => Promise<VolumeSource>;
  /** Folders output_url may write to; none: SegmentVolume cannot write and says so. */
  outputRoots?: readonly string[];
}

const toWire = (p: SegmentProgress, done = false, resultUrl = ""): SegmentVolumeResponse => ({
  blocksDone: BigInt(p.blocksDone),
  blocksTotal: BigInt(p.blocksTotal),
  objectsFound: BigInt(p.objectsFound),
  resultUrl,
  done,
});

/** The open volume `id` as an SDF for `box` at `scale` (field `sdf_volume_id`): it must exist,
 * cover the box and hold floats. Used by StartSession and SegmentVolume alike. */
export function openSdfVolume(volumes: VolumeRegistry, id: string, box: Box3, scale: number): ReturnType<VolumeRegistry["get"]> {
  let v: ReturnType<VolumeRegistry["get"]>;
  try {
    v = volumes.get(id);
  } catch (e) {
    if (e instanceof SpatialSamError && e._tag === "NotFound") throw notFound("sdf_volume_id", `no open volume "${id}"`);
    throw e;
  }
  PropagationEngine.checkBox(v.source, box, scale, "sdf_volume_id");
  if (DATA_TYPES[v.source.metadata.dtype].isBigInt) throw invalidArgument("sdf_volume_id", "an SDF must be a float volume");
  return v;
}

export function segmentVolumeCall(deps: SegmentVolumeDeps) {
  return async function* (req: SegmentVolumeRequest, ctx: CallContext): AsyncGenerator<SegmentVolumeResponse> {
    const { engine, volumes } = deps;
    const propagator = engine.propagatorNamed(req.model, "model");
    const { source, url, intensity } = volumes.get(req.volumeId);
    const box = fromWireBox(req.box, "box");
    checkSegmentBox(source, box, req.scale);
    let sdf: AutoSdfSource;
    if (req.sdfVolumeId !== "") {
      // A precomputed SDF: no SDF model runs, and sdf_model is not looked at.
      const v = openSdfVolume(volumes, req.sdfVolumeId, box, req.scale);
      sdf = { kind: "volume", volume: v.source, scale: req.scale, key: v.url };
    } else {
      const model = req.sdfModel || engine.defaultSdfModel;
      if (model === undefined) throw invalidArgument("sdf_model", "is required: this server has no default SDF model (or pass sdf_volume_id)");
      if (!engine.hasSdfModel(model) || deps.sdf === undefined || deps.openVolume === undefined) {
        throw invalidArgument("sdf_model", `no SDF model ${JSON.stringify(model)} on this server`);
      }
      sdf = { kind: "model", engine: deps.sdf, model, openVolume: deps.openVolume };
    }
    if (req.outputUrl === "") throw invalidArgument("output_url", "is required (e.g. precomputed://file:///out/seg)");
    if (deps.outputRoots === undefined || deps.outputRoots.length === 0) throw invalidArgument("output_url", "this server has no folders it may write to");
    const out = await openOutput(req.outputUrl, deps.outputRoots, "output_url");

    let latest: SegmentProgress | undefined;
    let wake: (() => void) | undefined;
    let finished = false;
    let failure: unknown;
    let resultUrl = "";
    let last: SegmentProgress = { stage: "sdf", blocksDone: 0, blocksTotal: 0, objectsFound: 0 };
    const running = segmentVolume({
      volume: source,
      volumeKey: url,
      ...(intensity === undefined ? {} : { intensity }),
      box,
      scale: req.scale,
      sdf,
      propagator,
      embeddings: engine.embeddings,
      out,
      ...(req.propagatedOnly ? { propagatedOnly: true } : {}),
      signal: ctx.signal,
      client: clientKey(ctx),
      onProgress: (p) => {
        latest = p;
        last = p;
        wake?.();
      },
    }).then(
      (r) => (resultUrl = r.resultUrl),
      (e: unknown) => (failure = e),
    );
    void running.finally(() => {
      finished = true;
      wake?.();
    });
    for (;;) {
      if (latest !== undefined) {
        const p = latest;
        latest = undefined;
        yield toWire(p);
      } else if (finished) {
        break;
      } else {
        await new Promise<void>((r) => (wake = r));
        wake = undefined;
      }
    }
    if (failure !== undefined) {
      if (failure instanceof SpatialSamError && failure.field === "out") throw new SpatialSamError(failure._tag, failure.message.replace(/^out: /, ""), { field: "output_url" });
      throw failure;
    }
    yield toWire(last, true, resultUrl);
  };
}
