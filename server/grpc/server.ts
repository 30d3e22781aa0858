// The gRPC inference server: health, models, volumes, and the engine services, on one socket.
import { Server, ServerCredentials } from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";
import { ModelServiceService } from "#proto/spatial_sam/v1/model.ts";
import { SdfServiceService } from "#proto/spatial_sam/v1/sdf.ts";
import { SegmentationServiceService } from "#proto/spatial_sam/v1/segmentation.ts";
import { VolumeServiceService } from "#proto/spatial_sam/v1/volume.ts";
import type { Logger } from "#server/log.ts";
import type { ServerMetrics } from "#server/metrics.ts";
import { authInterceptor, metricsInterceptor } from "#server/grpc/interceptors.ts";
import { modelService, type ModelBackend } from "#server/grpc/model_service.ts";
import { sdfServiceUnimplemented, segmentationServiceUnimplemented } from "#server/grpc/unimplemented.ts";
import { sdfService } from "#server/grpc/sdf_service.ts";
import { segmentationService } from "#server/grpc/segmentation_service.ts";
import type { PropagationEngine } from "#server/engine/propagation/engine.ts";
import type { SdfEngine } from "#server/engine/sdf_engine.ts";
import { VolumeRegistry, volumeService, type VolumeOpener } from "#server/grpc/volume_service.ts";

export interface GrpcServerOptions {
  host: string;
  /** 0 picks a free port. */
  port: number;
  models: ModelBackend;
  openVolume: VolumeOpener;
  /** The blockwise SDF engine; without one, ComputeSdf answers UNIMPLEMENTED. */
  sdf?: SdfEngine;
  /** Interactive propagation sessions; without it, SegmentationService answers UNIMPLEMENTED. */
  propagation?: PropagationEngine;
  /** Folders SegmentVolume may write its output to. */
  outputRoots?: string[];
  log: Logger;
  /** Largest message accepted or sent, in bytes. */
  maxMessageBytes?: number;
  maxOpenVolumes?: number;
  maxRegionVoxels?: number;
  /** sha256 hashes of the accepted bearer tokens; when set, every call but health needs one. */
  tokenHashes?: Buffer[];
  /** PEM certificate chain and private key: serve TLS instead of plaintext. */
  tls?: { certChain: Buffer; privateKey: Buffer };
  metrics?: ServerMetrics;
}

export interface RunningGrpcServer {
  port: number;
  address: string;
  health: HealthImplementation;
  close(): Promise<void>;
}

export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

const SERVICE_NAMES = [
  "spatial_sam.v1.ModelService",
  "spatial_sam.v1.VolumeService",
  "spatial_sam.v1.SdfService",
  "spatial_sam.v1.SegmentationService",
];

export async function startGrpcServer(options: GrpcServerOptions): Promise<RunningGrpcServer> {
  const maxMessageBytes = options.maxMessageBytes ?? DEFAULT_MAX_MESSAGE_BYTES;
  const log = options.log;
  const interceptors = [
    ...(options.metrics ? [metricsInterceptor(options.metrics)] : []),
    ...(options.tokenHashes ? [authInterceptor(options.tokenHashes, log)] : []),
  ];
  const server = new Server({
    "grpc.max_receive_message_length": maxMessageBytes,
    "grpc.max_send_message_length": maxMessageBytes,
    "grpc.keepalive_time_ms": 60_000,
    interceptors,
  });
  const health = new HealthImplementation({ "": "NOT_SERVING" });
  health.addToServer(server);
  const volumes = new VolumeRegistry({
    open: options.openVolume,
    maxOpenVolumes: options.maxOpenVolumes ?? 64,
    maxRegionVoxels: options.maxRegionVoxels ?? 256 * 1024 * 1024,
  });
  server.addService(ModelServiceService, modelService(options.models, log));
  server.addService(VolumeServiceService, volumeService(volumes, log));
  server.addService(SdfServiceService, options.sdf ? sdfService(volumes, options.sdf, log) : sdfServiceUnimplemented(log));
  server.addService(
    SegmentationServiceService,
    options.propagation ? segmentationService({
          volumes,
          engine: options.propagation,
          log,
          segment: {
            ...(options.sdf ? { sdf: options.sdf } : {}),
            openVolume: (url) => options.openVolume(url, {}),
            ...(options.outputRoots ? { outputRoots: options.outputRoots } : {}),
          },
        }) : segmentationServiceUnimplemented(log),
  );

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      `${options.host}:${options.port}`,
      options.tls ? ServerCredentials.createSsl(null, [{ cert_chain: options.tls.certChain, private_key: options.tls.privateKey }], false) : ServerCredentials.createInsecure(),
      (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  for (const name of ["", ...SERVICE_NAMES]) health.setStatus(name, "SERVING");
  const address = `${options.host.includes(":") ? `[${options.host}]` : options.host}:${port}`;
  log.info({ address, maxMessageBytes, tls: options.tls !== undefined, auth: options.tokenHashes !== undefined }, "gRPC server listening");

  return {
    port,
    address,
    health,
    close: async () => {
      for (const name of ["", ...SERVICE_NAMES]) health.setStatus(name, "NOT_SERVING");
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => server.forceShutdown(), 5_000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      await volumes.closeAll();
    },
  };
}
