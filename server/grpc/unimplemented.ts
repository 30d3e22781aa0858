// Engine RPCs whose issues have not landed answer UNIMPLEMENTED with a message saying so: no fake answers.
import type { SdfServiceServer } from "#proto/spatial_sam/v1/sdf.ts";
import type { SegmentationServiceServer } from "#proto/spatial_sam/v1/segmentation.ts";
import { unimplemented } from "#src/errors.ts";
import type { Logger } from "#server/log.ts";
import { serverStreaming, unary } from "#server/grpc/handlers.ts";

const ENGINE = "the inference engine (blockwise SDF, propagation, automatic segmentation) has not landed yet";

function notYetUnary(method: string, log: Logger) {
  return unary(method, log, async () => {
    throw unimplemented(`${method}: ${ENGINE}`);
  });
}

function notYetStreaming(method: string, log: Logger) {
  return serverStreaming(method, log, async function* () {
    yield* [];
    throw unimplemented(`${method}: ${ENGINE}`);
  });
}

export function sdfServiceUnimplemented(log: Logger): SdfServiceServer {
  return { computeSdf: notYetStreaming("ComputeSdf", log) };
}

export function segmentationServiceUnimplemented(log: Logger): SegmentationServiceServer {
  return {
    startSession: notYetUnary("StartSession", log),
    addPrompts: notYetUnary("AddPrompts", log),
    propagate: notYetStreaming("Propagate", log),
    removeObject: notYetUnary("RemoveObject", log),
    resetSession: notYetUnary("ResetSession", log),
    closeSession: notYetUnary("CloseSession", log),
    segmentVolume: notYetStreaming("SegmentVolume", log),
  };
}
