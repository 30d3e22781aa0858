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
  type StartSessionRequest,
} from "#proto/spatial_sam/v1/segmentation.ts";
import { VolumeServiceClient } from "#proto/spatial_sam/v1/volume.ts";
import { SpatialSamError, type ErrorTag } from "#src/errors.ts";

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
    const creds = credentials.createInsecure();
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
  async openVolume(url: string, signal?: AbortSignal): Promise<string> {
    const c = this.#volumes;
    const res = await this.#unary("OpenVolume", c.openVolume.bind(c), { url }, signal);
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
  async *propagate(req: PropagateRequest, signal?: AbortSignal): AsyncGenerator<PropagateResponse> {
    signal?.throwIfAborted();
    const call = this.#segmentation.propagate(req, this.#metadata());
    const cancel = () => call.cancel();
    signal?.addEventListener("abort", cancel, { once: true });
    try {
      for await (const msg of call as AsyncIterable<PropagateResponse>) yield msg;
    } catch (e) {
      const err = e as ServiceError;
      throw typeof err.code === "number" ? fromServiceError(err, "Propagate") : e;
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
