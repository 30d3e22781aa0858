// Promise wrappers over the generated grpc-js clients, for tests.
import { credentials, Metadata, type ClientReadableStream, type ServiceError } from "@grpc/grpc-js";
import { ModelServiceClient } from "#proto/spatial_sam/v1/model.ts";
import { SdfServiceClient } from "#proto/spatial_sam/v1/sdf.ts";
import { SegmentationServiceClient } from "#proto/spatial_sam/v1/segmentation.ts";
import { VolumeServiceClient, type OpenVolumeRequest, type OpenVolumeResponse } from "#proto/spatial_sam/v1/volume.ts";

export interface Clients {
  models: ModelServiceClient;
  volumes: VolumeServiceClient;
  sdf: SdfServiceClient;
  segmentation: SegmentationServiceClient;
  close(): void;
}

export function connect(address: string, options: Record<string, number> = {}): Clients {
  const creds = credentials.createInsecure();
  const c = {
    models: new ModelServiceClient(address, creds, options),
    volumes: new VolumeServiceClient(address, creds, options),
    sdf: new SdfServiceClient(address, creds, options),
    segmentation: new SegmentationServiceClient(address, creds, options),
  };
  return { ...c, close: () => Object.values(c).forEach((x) => x.close()) };
}

type UnaryMethod<Req, Res> = (
  req: Req,
  metadata: Metadata,
  options: { deadline?: number },
  cb: (err: ServiceError | null, res: Res) => void,
) => unknown;

/** Calls a unary method; resolves the response or rejects with the ServiceError. */
export function call<Req, Res>(
  client: object,
  method: UnaryMethod<Req, Res>,
  req: Req,
  options: { deadline?: number } = {},
): Promise<Res> {
  return new Promise((resolve, reject) =>
    method.call(client, req, new Metadata(), options, (err, res) => (err ? reject(err) : resolve(res))),
  );
}

/** VolumeService.OpenVolume (only the clients' volume service is used). */
export function grpcOpenVolume(clients: Pick<Clients, "volumes">, req: OpenVolumeRequest): Promise<OpenVolumeResponse> {
  return call<OpenVolumeRequest, OpenVolumeResponse>(clients.volumes, clients.volumes.openVolume, req);
}

/** Resolves the ServiceError a promise rejects with (fails if it resolves). */
export async function grpcError(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (e) {
    return e as ServiceError;
  }
  throw new Error("expected the call to fail");
}

/** Collects a server stream into an array (rejects with the stream's error). */
export function collect<T>(stream: ClientReadableStream<T>): Promise<T[]> {
  return new Promise((resolve, reject) => {
    const out: T[] = [];
    stream.on("data", (m: T) => out.push(m));
    stream.on("error", (e: ServiceError) => reject(e));
    stream.on("end", () => resolve(out));
  });
}
