// The spatialsam:// scheme of the viewer: ids map to the serving bridge's precomputed URLs; anything
// else is an InvalidArgument naming the url (Neuroglancer shows it as the layer's error).
import { describe, expect, it } from "vitest";
import { isSpatialSamError } from "#src/errors.ts";
import { precomputedUrlFor } from "#layer/spatialsam_url.ts";

describe("precomputedUrlFor", () => {
  it("resolves an id against the page's origin, whatever the page's path or hash", () => {
    expect(precomputedUrlFor("demo-labels", "http://127.0.0.1:8080/")).toBe("precomputed://http://127.0.0.1:8080/volumes/demo-labels");
    expect(precomputedUrlFor("v0123abcd/", "https://host.example/index.html#!{}")).toBe("precomputed://https://host.example/volumes/v0123abcd");
  });

  it.each(["", "../etc", "a/b", "x?y=1", "http://evil.example/v", "-leading", "a".repeat(65)])("rejects %j", (bad) => {
    let error: unknown;
    try {
      precomputedUrlFor(bad, "http://127.0.0.1:8080/");
    } catch (e) {
      error = e;
    }
    expect(isSpatialSamError(error) && error._tag === "InvalidArgument" && error.field === "url").toBe(true);
  });
});
