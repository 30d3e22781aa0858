// The volume formats this server reads. Each import registers its driver with
// format_registry.ts; adding a format is one import line here (see README.md).

import "./zarr.ts";
import "./tiff.ts";
import "./n5.ts";
import "./png_stack.ts";
import "./precomputed.ts";
import "./h5.ts";
