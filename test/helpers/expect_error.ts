// Asserts that a promise rejects with a SpatialSamError of the given tag whose field names the
// culprit (exactly, for a string; by pattern, for a RegExp), and returns it for further checks.
import { expect } from "vitest";
import { SpatialSamError } from "#src/errors.ts";

export async function expectError(p: Promise<unknown>, tag: string, field: RegExp | string, message?: RegExp): Promise<SpatialSamError> {
  const e = await p.then(
    () => expect.fail("expected a rejection"),
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(SpatialSamError);
  const s = e as SpatialSamError;
  expect(s._tag, s.message).toBe(tag);
  if (typeof field === "string") expect(s.field).toBe(field);
  else expect(s.field ?? "").toMatch(field);
  if (message !== undefined) expect(s.message).toMatch(message);
  return s;
}
