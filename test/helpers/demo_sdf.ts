// The demo volume's exact SDF for the live browser tests' propagator memory: computed in Python
// (spatialsam.sdf) from the demo labels, so the tests do not depend on the SDF U-Net.
import { execFileSync } from "node:child_process";
import { join } from "node:path";

const PYTHON = join(import.meta.dirname, "..", "..", "models", ".venv", "bin", "python");

/** The demo's normalised SDF (spatialsam.sdf, scipy's EDT) from its labels, read by tensorstore. */
export function writeDemoSdf(labelsDir: string, out: string): void {
  const script = `
import sys, numpy as np, tensorstore as ts
from spatialsam.sdf import sdf_target
lab = np.asarray(ts.open({"driver": "neuroglancer_precomputed", "kvstore": "file://" + sys.argv[1]}).result().read().result())[..., 0]
sdf = np.transpose(sdf_target(np.transpose(lab, (2, 1, 0)) > 0, (8.0, 8.0, 8.0)).astype(np.float32), (2, 1, 0))
out = ts.open({"driver": "neuroglancer_precomputed", "kvstore": "file://" + sys.argv[2],
  "multiscale_metadata": {"type": "image", "data_type": "float32", "num_channels": 1},
  "scale_metadata": {"size": list(lab.shape[:3]), "resolution": [8, 8, 8], "encoding": "raw", "chunk_size": [64, 64, 32]},
  "create": True}).result()
out[..., 0].write(sdf).result()
`;
  execFileSync(PYTHON, ["-c", script, labelsDir, out]);
}
