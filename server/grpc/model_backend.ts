// Presents the ONNX model registry to the gRPC layer as a ModelBackend.
import { numericShape, type TensorSpec } from "#src/manifest.ts";
import type { ModelRegistry } from "#server/onnx/model_registry.ts";
import type { ModelBackend, TensorSpecDescription } from "#server/grpc/model_service.ts";

const describeSpec = (s: TensorSpec): TensorSpecDescription => ({ name: s.name, dtype: s.dtype, shape: numericShape(s.shape), axes: s.axes });

export function registryBackend(registry: ModelRegistry): ModelBackend {
  return {
    describe: () =>
      registry.list().map((m) => ({
        name: m.manifest.name,
        version: m.manifest.version,
        kind: m.manifest.kind,
        onnxSha256: m.manifest.sha256,
        inputs: m.manifest.inputs.map(describeSpec),
        outputs: m.manifest.outputs.map(describeSpec),
        voxelSizeNm: m.manifest.voxelSizeNm,
        contextZyx: m.manifest.contextZyx,
        executionProvider: m.executionProvider,
        manifestJson: m.manifestJson,
      })),
    run: (model, inputs, options) => registry.run(model, inputs, options),
  };
}
