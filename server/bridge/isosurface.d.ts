// Types for npm `isosurface` 1.0.0 (MIT, ships none): the parts the mesh extractor uses.
declare module "isosurface" {
  export interface IsosurfaceMesh {
    /** Vertex positions in grid units ([x, y, z]); each cube emits its own (not shared). */
    positions: number[][];
    /** Triangles as vertex indices into `positions`. */
    cells: number[][];
  }
  /** Samples `potential` at the integer points of a `dims` ([x, y, z]) grid; positive is inside. */
  export function marchingCubes(dims: [number, number, number], potential: (x: number, y: number, z: number) => number): IsosurfaceMesh;
}
