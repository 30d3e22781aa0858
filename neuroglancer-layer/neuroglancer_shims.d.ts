// Typings for the one neuroglancer module the layer uses that ships without a .d.ts.
declare module "neuroglancer/unstable/chunk_manager/frontend.js" {
  export interface FrontendChunk {
    state: number;
    freeGPUMemory(gl: unknown): void;
  }
  export class ChunkSource {
    chunks: Map<string, FrontendChunk>;
    get gl(): unknown;
    addChunk(key: string, chunk: FrontendChunk): void;
  }
}
