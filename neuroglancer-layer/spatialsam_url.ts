// The `spatialsam://` data source URL scheme: `spatialsam://<volume id>` names a volume registered
// with the bridge that served this page; it resolves to the bridge's precomputed URL for it.
import { VOLUME_ID_PATTERN, volumePath } from "#src/bridge_api.ts";
import { invalidArgument } from "#src/errors.ts";

export const SCHEME = "spatialsam";

/**
 * Maps the part after `spatialsam://` (Neuroglancer's providerUrl) to
 * `precomputed://<bridge origin>/volumes/<id>`. `pageUrl` is the viewer page's URL; the bridge
 * serves the page at its root, so its origin is the bridge's.
 */
export function precomputedUrlFor(providerUrl: string, pageUrl: string): string {
  const id = providerUrl.replace(/\/+$/, "");
  if (!VOLUME_ID_PATTERN.test(id)) {
    throw invalidArgument("url", `expected ${SCHEME}://<volume id>, got ${JSON.stringify(`${SCHEME}://${providerUrl}`)}`);
  }
  return `precomputed://${new URL(pageUrl).origin}/${volumePath(id)}`;
}
