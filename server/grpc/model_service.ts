// ModelService: what the server loaded (from each model's manifest) and a low-level RunModel.
import type { ModelServiceServer, ModelInfo, TensorSpec } from "#proto/spatial_sam/v1/model.ts";
import type { DataType } from "#src/dtype.ts";
import { invalidArgument } from "#src/errors.ts";
import type { Vec3 } from "#src/volume/types.ts";
import type { Logger } from "#server/log.ts";
import { clientKey, unary } from "#server/grpc/handlers.ts";
import { fromWireTensor, toWireDataType, toWireTensor, type TensorData } from "#server/grpc/convert.ts";

export interface TensorSpecDescription {
  name: string;
  dtype: DataType;
  /** -1 marks a dynamic dimension. */
  shape: number[];
  axes: string;
}

export interface ModelDescription {
  name: string;
  version: string;
  kind: string;
  onnxSha256: string;
  inputs: TensorSpecDescription[];
  outputs: TensorSpecDescription[];
  voxelSizeNm: Vec3;
  contextZyx: Vec3;
  executionProvider: string;
  manifestJson: string;
}

/** What the gRPC layer needs from the ONNX serving core. */
export interface ModelBackend {
  describe(): ModelDescription[];
  run(model: string, inputs: Record<string, TensorData>, options: { signal?: AbortSignal; client?: string }): Promise<Record<string, TensorData>>;
}

const spec = (s: TensorSpecDescription): TensorSpec => ({
  name: s.name,
  dtype: toWireDataType(s.dtype),
  shape: s.shape.map((d) => BigInt(d)),
  axes: s.axes,
});

function modelInfo(m: ModelDescription): ModelInfo {
  return {
    name: m.name,
    version: m.version,
    kind: m.kind,
    onnxSha256: m.onnxSha256,
    inputs: m.inputs.map(spec),
    outputs: m.outputs.map(spec),
    voxelSizeNm: { z: m.voxelSizeNm[0], y: m.voxelSizeNm[1], x: m.voxelSizeNm[2] },
    context: { z: m.contextZyx[0], y: m.contextZyx[1], x: m.contextZyx[2] },
    executionProvider: m.executionProvider,
    manifestJson: m.manifestJson,
  };
}

export function modelService(models: ModelBackend, log: Logger): ModelServiceServer {
  return {
    listModels: unary("ListModels", log, async () => ({ models: models.describe().map(modelInfo) })),
    runModel: unary("RunModel", log, async (req, ctx) => {
      if (!req.model) throw invalidArgument("model", "is required");
      const inputs: Record<string, TensorData> = {};
      for (const [name, t] of Object.entries(req.inputs)) inputs[name] = fromWireTensor(t, `inputs.${name}`);
      const outputs = await models.run(req.model, inputs, { signal: ctx.signal, client: clientKey(ctx) });
      return { outputs: Object.fromEntries(Object.entries(outputs).map(([k, v]) => [k, toWireTensor(v)])) };
    }),
  };
}
