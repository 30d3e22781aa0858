// Typed domain errors. Every error a user can cause carries a `_tag` and the field, file or id it
// is about; the gRPC and HTTP boundaries map tags to status codes in exactly one place each.

export type ErrorTag =
  | "InvalidArgument" // malformed or out-of-range input; `field` names it
  | "NotFound" // an unknown id, model, file or key
  | "FailedPrecondition" // valid input that the current state cannot accept
  | "ResourceExhausted" // a bounded queue or memory budget is full
  | "Cancelled" // the caller went away or aborted
  | "DeadlineExceeded"
  | "PermissionDenied" // e.g. a path outside the configured roots
  | "Unauthenticated"
  | "DataCorruption" // stored data that cannot be decoded; `field` names the file or chunk
  | "Unimplemented"
  | "Unavailable"; // a transient server-side failure (e.g. an ONNX worker died); retrying may succeed

export class SpatialSamError extends Error {
  readonly _tag: ErrorTag;
  /** The request field, file path, chunk key or id this error is about, if any. */
  readonly field: string | undefined;

  constructor(tag: ErrorTag, message: string, options: { field?: string; cause?: unknown } = {}) {
    super(options.field !== undefined ? `${options.field}: ${message}` : message, { cause: options.cause });
    this.name = `SpatialSamError(${tag})`;
    this._tag = tag;
    this.field = options.field;
  }
}

export const invalidArgument = (field: string, message: string, cause?: unknown) =>
  new SpatialSamError("InvalidArgument", message, { field, cause });
export const notFound = (field: string, message: string) => new SpatialSamError("NotFound", message, { field });
export const failedPrecondition = (message: string, field?: string) =>
  new SpatialSamError("FailedPrecondition", message, field === undefined ? {} : { field });
export const resourceExhausted = (message: string, field?: string) =>
  new SpatialSamError("ResourceExhausted", message, field === undefined ? {} : { field });
export const cancelled = (message = "the operation was cancelled") => new SpatialSamError("Cancelled", message);
export const dataCorruption = (field: string, message: string, cause?: unknown) =>
  new SpatialSamError("DataCorruption", message, { field, cause });
export const permissionDenied = (field: string, message: string) =>
  new SpatialSamError("PermissionDenied", message, { field });
export const unimplemented = (message: string) => new SpatialSamError("Unimplemented", message);
export const unavailable = (message: string, field?: string) =>
  new SpatialSamError("Unavailable", message, field === undefined ? {} : { field });

export function isSpatialSamError(e: unknown): e is SpatialSamError {
  return e instanceof SpatialSamError;
}

/**
 * Rethrows a nested failure with its path prefixed, so validation errors read like
 * `scales[2].chunk_shape: expected 3 positive integers` (Neuroglancer's JSON validators do this).
 */
export function withPath<T>(path: string, fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (e instanceof SpatialSamError && e._tag === "InvalidArgument") {
      const field = e.field === undefined ? path : e.field.startsWith("[") ? `${path}${e.field}` : `${path}.${e.field}`;
      const bare = e.field === undefined ? e.message : e.message.slice(e.field.length + 2);
      throw invalidArgument(field, bare, e.cause);
    }
    throw e;
  }
}

/** Throws Cancelled if the signal has fired. Call at every await boundary of long work. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw cancelled(signal.reason instanceof Error ? signal.reason.message : undefined);
}
