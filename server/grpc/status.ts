// The one place where domain errors become gRPC statuses. Anything that is not a SpatialSamError
// is a bug: the client gets INTERNAL with a generic message, the stack goes to the log.
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { isSpatialSamError, type ErrorTag } from "#src/errors.ts";
import type { Logger } from "#server/log.ts";

const CODE_OF_TAG: Record<ErrorTag, status> = {
  InvalidArgument: status.INVALID_ARGUMENT,
  NotFound: status.NOT_FOUND,
  FailedPrecondition: status.FAILED_PRECONDITION,
  ResourceExhausted: status.RESOURCE_EXHAUSTED,
  Cancelled: status.CANCELLED,
  DeadlineExceeded: status.DEADLINE_EXCEEDED,
  PermissionDenied: status.PERMISSION_DENIED,
  Unauthenticated: status.UNAUTHENTICATED,
  DataCorruption: status.DATA_LOSS,
  Unimplemented: status.UNIMPLEMENTED,
  Unavailable: status.UNAVAILABLE,
};

export function toServiceError(e: unknown, log: Logger, method: string): Partial<ServiceError> & { code: status } {
  const metadata = new Metadata();
  if (isSpatialSamError(e)) {
    if (e.field !== undefined) metadata.set("spatial-sam-field", e.field);
    const code = CODE_OF_TAG[e._tag];
    log.info({ method, code: status[code], field: e.field, msg: e.message }, "call failed");
    return { code, details: e.message, metadata };
  }
  log.error({ method, err: e }, "unexpected error in handler");
  return { code: status.INTERNAL, details: "internal error (see server log)", metadata };
}
