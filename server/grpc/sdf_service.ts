// SdfService: blockwise SDF of a box, streamed as progress; the last message says where it lives.
import type { ComputeSdfResponse, SdfServiceServer } from "#proto/spatial_sam/v1/sdf.ts";
import { invalidArgument } from "#src/errors.ts";
import type { Logger } from "#server/log.ts";
import type { SdfEngine, SdfProgress } from "#server/engine/sdf_engine.ts";
import { clientKey, serverStreaming } from "#server/grpc/handlers.ts";
import { fromWireBox } from "#server/grpc/convert.ts";
import type { VolumeRegistry } from "#server/grpc/volume_service.ts";

export function sdfService(volumes: VolumeRegistry, engine: SdfEngine, log: Logger): SdfServiceServer {
  return {
    computeSdf: serverStreaming("ComputeSdf", log, async function* (req, ctx): AsyncGenerator<ComputeSdfResponse> {
      if (!req.model) throw invalidArgument("model", "is required");
      const { source, url, intensity } = volumes.get(req.volumeId);
      const box = fromWireBox(req.box, "box");
      // Progress arrives from callbacks; hand it to the stream through a small mailbox that keeps
      // only the latest report (a slow client sees fewer, fresher messages, never a backlog).
      let latest: SdfProgress | undefined;
      let wake: (() => void) | undefined;
      let finished = false;
      const work = engine
        .compute({
          volume: source,
          volumeKey: url,
          ...(intensity === undefined ? {} : { intensity }),
          box,
          scale: req.scale,
          model: req.model,
          signal: ctx.signal,
          client: clientKey(ctx),
          onProgress: (p) => {
            latest = p;
            wake?.();
          },
        })
        .finally(() => {
          finished = true;
          wake?.();
        });
      work.catch(() => undefined);
      const toWire = (p: SdfProgress): ComputeSdfResponse => ({
        blocksDone: BigInt(p.blocksDone),
        blocksTotal: BigInt(p.blocksTotal),
        blocksCached: BigInt(p.blocksCached),
        resultUrl: "",
        done: false,
      });
      while (!finished) {
        if (latest === undefined) await new Promise<void>((r) => (wake = r));
        wake = undefined;
        if (latest !== undefined && !finished) {
          const p = latest;
          latest = undefined;
          yield toWire(p);
        }
      }
      const result = await work;
      yield { ...toWire(result), resultUrl: result.resultUrl, done: true };
    }),
  };
}
