// Structured logging: one JSON object per line on stderr (stdout stays free for CLI output).
import { pino, type Logger } from "pino";

export type { Logger };

export function createLogger(options: { level?: string; name?: string } = {}): Logger {
  return pino(
    {
      name: options.name ?? "spatial-sam",
      level: options.level ?? process.env.SPATIAL_SAM_LOG_LEVEL ?? "info",
      // Never log credentials, whatever object a caller passes.
      redact: ["token", "*.token", "authorization", "*.authorization", "headers.authorization"],
    },
    pino.destination(2),
  );
}

/** A logger that drops everything (tests that do not inspect logs). */
export function silentLogger(): Logger {
  return pino({ level: "silent" });
}
