// Entry of an ONNX worker thread. On Node 20 a worker does not inherit the parent's `--import tsx`
// hooks (passing `execArgv: ["--import", "tsx"]` still fails with ERR_UNKNOWN_FILE_EXTENSION), so
// this plain-JS entry registers tsx inside the worker, then loads the TypeScript worker.
import { register } from "tsx/esm/api";

register();
await import("./onnx_worker.ts");
