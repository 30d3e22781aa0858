// The one place where domain errors become HTTP responses for the bridge. A SpatialSamError is
// answered with its status and `{error, field, message}`; anything else is a bug: 500 with a
// generic message, and the stack goes to the log.
import type { NextFunction, Request, Response } from "express";
import { isSpatialSamError, type ErrorTag } from "#src/errors.ts";
import type { Logger } from "#server/log.ts";

const STATUS_OF_TAG: Record<ErrorTag, number> = {
  InvalidArgument: 400,
  Unauthenticated: 401,
  PermissionDenied: 403,
  NotFound: 404,
  FailedPrecondition: 409,
  ResourceExhausted: 429,
  // nginx's "client closed request": nobody reads it, but logs stay truthful.
  Cancelled: 499,
  DataCorruption: 502,
  Unimplemented: 501,
  Unavailable: 503,
  DeadlineExceeded: 504,
};

export interface ErrorBody {
  error: ErrorTag | "Internal";
  field?: string;
  message: string;
}

export function sendError(res: Response, e: unknown, log: Logger, route: string): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  res.setHeader("Cache-Control", "no-store");
  if (isSpatialSamError(e)) {
    const status = STATUS_OF_TAG[e._tag];
    log.info({ route, status, field: e.field, msg: e.message }, "bridge request failed");
    const body: ErrorBody = { error: e._tag, ...(e.field === undefined ? {} : { field: e.field }), message: e.message };
    res.status(status).json(body);
    return;
  }
  // express.json() reports bad or oversized bodies as errors with a status (http-errors).
  const status = (e as { status?: unknown }).status;
  if (typeof status === "number" && status >= 400 && status < 500) {
    const body: ErrorBody = { error: status === 413 ? "ResourceExhausted" : "InvalidArgument", field: "body", message: `body: ${(e as Error).message}` };
    res.status(status).json(body);
    return;
  }
  log.error({ route, err: e }, "unexpected error in bridge handler");
  res.status(500).json({ error: "Internal", message: "internal error (see server log)" } satisfies ErrorBody);
}

/** Wraps an async handler so every throw goes through sendError. */
export function handle(log: Logger, route: string, fn: (req: Request, res: Response) => Promise<void> | void) {
  return (req: Request, res: Response, _next: NextFunction): void => {
    Promise.resolve()
      .then(() => fn(req, res))
      .catch((e: unknown) => sendError(res, e, log, route));
  };
}
