// The bridge's side of the inference server: promise wrappers over the generated grpc-js clients of
// SegmentationService and VolumeService, so the bridge can front this process's gRPC port or a
// remote GPU server alike. gRPC failures come back as SpatialSamErrors (the server's field, from
// the `spatial-sam-field` trailer, is kept), so the bridge answers them like its own.
import { credentials, Metadata, status, type CallOptions, type ClientUnaryCall, type ServiceError } from "@grpc/grpc-js";
import {
  SegmentationServiceClient,
  type AddPromptsRequest,
  type AddPromptsResponse,
  type PropagateRequest,
  type PropagateResponse,
  type SegmentVolumeRequest,
  type SegmentVolumeResponse,
  type StartSessionRequest,
} from "#proto/spatial_sam/v1/segmentation.ts";
import { VolumeServiceClient, type ReadRegionResponse } from "#proto/spatial_sam/v1/volume.ts";
import { DataType as WireDataType } from "#proto/spatial_sam/v1/common.ts";
import { dataCorruption, SpatialSamError, type ErrorTag } from "#src/errors.ts";
import type { IntensityWindow } from "#src/intensity.ts";
import type { Box3 } from "#src/volume/types.ts";

const TAG_OF_CODE: Partial<Record<status, ErrorTag>> = {
  [status.INVALID_ARGUMENT]: "InvalidArgument",
  [status.NOT_FOUND]: "NotFound",
  [status.FAILED_PRECONDITION]: "FailedPrecondition",
  [status.RESOURCE_EXHAUSTED]: "ResourceExhausted",
  [status.CANCELLED]: "Cancelled",
  [status.DEADLINE_EXCEEDED]: "DeadlineExceeded",
  [status.PERMISSION_DENIED]: "PermissionDenied",
  [status.UNAUTHENTICATED]: "Unauthenticated",
  [status.DATA_LOSS]: "DataCorruption",
  [status.UNIMPLEMENTED]: "Unimplemented",
  [status.UNAVAILABLE]: "Unavailable",
};

/** A failed call as a SpatialSamError; INTERNAL and UNKNOWN stay plain errors (a 500, logged). */
export function fromServiceError(e: ServiceError, method: string): Error {
  const tag = TAG_OF_CODE[e.code];
  if (tag === undefined) return new Error(`${method}: ${e.details || e.message}`, { cause: e });
  const field = e.metadata?.get("spatial-sam-field")[0];
  if (typeof field !== "string") return new SpatialSamError(tag, `${method}: ${e.details}`, { cause: e });
  // The server's message starts with the field already; the error adds it back in front.
  const details = e.details.startsWith(`${field}: `) ? e.details.slice(field.length + 2) : e.details;
  return new SpatialSamError(tag, `${details} (${method})`, { field, cause: e });
}

export interface SegmentationClientOptions {
  /** host:port of the inference server's gRPC side. */
  target: string;
  /** Sent as `authorization: Bearer <token>` when the server requires one. */
  token?: string;
  /** PEM CA certificate(s): talk TLS to the server, verifying its certificate against them. */
  tlsCa?: Buffer;
}

type Callback<Res> = (err: ServiceError | null, res: Res) => void;

export class SegmentationClient {
  readonly target: string;
  readonly #segmentation: SegmentationServiceClient;
  readonly #volumes: VolumeServiceClient;
  readonly #token: string | undefined;

  constructor(options: SegmentationClientOptions) {
    this.target = options.target;
    this.#token = options.token;
    const creds = options.tlsCa === undefined ? credentials.createInsecure() : credentials.createSsl(options.tlsCa);
    // Masks of a whole slice can exceed grpc-js's 4 MiB default on large volumes.
    const channel = { "grpc.max_receive_message_length": 64 * 1024 * 1024 };
    this.#segmentation = new SegmentationServiceClient(options.target, creds, channel);
    this.#volumes = new VolumeServiceClient(options.target, creds, channel);
  }

  #metadata(): Metadata {
    const m = new Metadata();
    if (this.#token !== undefined) m.set("authorization", `Bearer ${this.#token}`);
    return m;
  }

  #unary<Req, Res>(
    method: string,
    fn: (req: Req, md: Metadata, options: Partial<CallOptions>, cb: Callback<Res>) => ClientUnaryCall,
    req: Req,
    signal?: AbortSignal,
  ): Promise<Res> {
    return new Promise((resolve, reject) => {
      signal?.throwIfAborted();
      const call = fn(req, this.#metadata(), {}, (err, res) => {
        signal?.removeEventListener("abort", cancel);
        if (err) reject(fromServiceError(err, method));
        else resolve(res);
      });
      const cancel = () => call.cancel();
      signal?.addEventListener("abort", cancel, { once: true });
    });
  }

  /** Opens `url` on the server; resolves the server's volume id. */
  async openVolume(url: string, signal?: AbortSignal, intensityWindow?: IntensityWindow): Promise<string> {
    const c = this.#volumes;
    const res = await this.#unary("OpenVolume", c.openVolume.bind(c), { url, ...(intensityWindow === undefined ? {} : { intensityWindow }) }, signal);
    if (res.volume === undefined) throw new Error("OpenVolume: the server answered no volume");
    return res.volume.volumeId;
  }

  async startSession(req: StartSessionRequest, signal?: AbortSignal): Promise<string> {
    const c = this.#segmentation;
    return (await this.#unary("StartSession", c.startSession.bind(c), req, signal)).sessionId;
  }

  addPrompts(req: AddPromptsRequest, signal?: AbortSignal): Promise<AddPromptsResponse> {
    const c = this.#segmentation;
    return this.#unary("AddPrompts", c.addPrompts.bind(c), req, signal);
  }

  async removeObject(sessionId: string, objectId: bigint): Promise<void> {
    const c = this.#segmentation;
    await this.#unary("RemoveObject", c.removeObject.bind(c), { sessionId, objectId });
  }

  async closeSession(sessionId: string): Promise<void> {
    const c = this.#segmentation;
    await this.#unary("CloseSession", c.closeSession.bind(c), { sessionId });
  }

  /** Each propagated slice as the server streams it; aborting `signal` cancels the call. */
  propagate(req: PropagateRequest, signal?: AbortSignal): AsyncGenerator<PropagateResponse> {
    return this.#stream("Propagate", () => this.#segmentation.propagate(req, this.#metadata()), signal);
  }

  /** Automatic segmentation of a box: the server's progress messages as it streams them. */
  segmentVolume(req: SegmentVolumeRequest, signal?: AbortSignal): AsyncGenerator<SegmentVolumeResponse> {
    return this.#stream("SegmentVolume", () => this.#segmentation.segmentVolume(req, this.#metadata()), signal);
  }

  /**
   * The uint64 voxels of `box` (zyx, C order) of a volume the server has open, assembled from the
   * pieces ReadRegion streams.
   */
  async readLabels(volumeId: string, box: Box3, signal?: AbortSignal): Promise<BigUint64Array> {
    const [bz, by, bx] = box.shapeZyx;
    const out = new BigUint64Array(bz * by * bx);
    const wire = { offset: { z: box.offsetZyx[0], y: box.offsetZyx[1], x: box.offsetZyx[2] }, shape: { z: bz, y: by, x: bx } };
    for await (const piece of this.#stream<ReadRegionResponse>("ReadRegion", () => this.#volumes.readRegion({ volumeId, box: wire, scale: 0 }, this.#metadata()), signal)) {
      const o = piece.box?.offset;
      const n = piece.box?.shape;
      const t = piece.data;
      if (o === undefined || n === undefined || t === undefined || t.dtype !== WireDataType.DATA_TYPE_UINT64 || t.data.byteLength !== n.z * n.y * n.x * 8) {
        throw dataCorruption("ReadRegion", "a piece without a box or uint64 data of its size");
      }
      const [lz, ly, lx] = [o.z - box.offsetZyx[0], o.y - box.offsetZyx[1], o.x - box.offsetZyx[2]];
      if (lz < 0 || ly < 0 || lx < 0 || lz + n.z > bz || ly + n.y > by || lx + n.x > bx) throw dataCorruption("ReadRegion", "a piece outside the requested box");
      const data = new BigUint64Array(t.data.buffer.slice(t.data.byteOffset, t.data.byteOffset + t.data.byteLength));
      for (let z = 0; z < n.z; z++)
        for (let y = 0; y < n.y; y++) out.set(data.subarray((z * n.y + y) * n.x, (z * n.y + y + 1) * n.x), ((lz + z) * by + ly + y) * bx + lx);
    }
    return out;
  }

  async closeVolume(volumeId: string): Promise<void> {
    const c = this.#volumes;
    await this.#unary("CloseVolume", c.closeVolume.bind(c), { volumeId });
  }

  async *#stream<Res>(method: string, start: () => { cancel(): void } & AsyncIterable<unknown>, signal?: AbortSignal): AsyncGenerator<Res> {
    signal?.throwIfAborted();
    const call = start();
    const cancel = () => call.cancel();
    signal?.addEventListener("abort", cancel, { once: true });
    try {
      for await (const msg of call) yield msg as Res;
    } catch (e) {
      const err = e as ServiceError;
      throw typeof err.code === "number" ? fromServiceError(err, method) : e;
    } finally {
      signal?.removeEventListener("abort", cancel);
      call.cancel();
    }
  }

  close(): void {
    this.#segmentation.close();
    this.#volumes.close();
  }
}
