// Blockwise work in daisy's vocabulary: a task tiles its `totalBox` into blocks on a fixed grid;
// each block has a `writeBox` (the valid output it owns, clipped to the total box) and a `readBox`
// (the unclipped block grown by the model's context; it may reach outside the volume, where the
// reader fills it). Every readBox has the same shape, so a model sees one input shape throughout.
// The grid is anchored at the total box's origin, so a block's identity (its index) does not
// depend on which request asked for it: that is what makes blocks cacheable and shareable.

import { chunkIndices, chunkRange, intersectBoxes } from "#src/geometry.ts";
import { invalidArgument } from "#src/errors.ts";
import type { Box3, Vec3 } from "#src/volume/types.ts";

export interface Block {
  /** Grid index (z, y, x). */
  index: Vec3;
  writeBox: Box3;
  readBox: Box3;
}

export class BlockGrid {
  constructor(
    readonly totalBox: Box3,
    readonly blockShapeZyx: Vec3,
    readonly contextZyx: Vec3,
  ) {
    blockShapeZyx.forEach((s, d) => {
      if (!Number.isInteger(s) || s <= 0) throw invalidArgument(`block_shape[${d}]`, `must be a positive integer, got ${s}`);
    });
    contextZyx.forEach((c, d) => {
      if (!Number.isInteger(c) || c < 0) throw invalidArgument(`context[${d}]`, `must be a non-negative integer, got ${c}`);
    });
  }

  get gridShapeZyx(): Vec3 {
    return [0, 1, 2].map((d) => Math.ceil(this.totalBox.shapeZyx[d]! / this.blockShapeZyx[d]!)) as Vec3;
  }

  block(index: Vec3): Block {
    const start = [0, 1, 2].map((d) => this.totalBox.offsetZyx[d]! + index[d]! * this.blockShapeZyx[d]!) as Vec3;
    const full: Box3 = { offsetZyx: start, shapeZyx: this.blockShapeZyx };
    const writeBox = intersectBoxes(full, this.totalBox);
    if (writeBox === undefined) throw invalidArgument("block", `index [${index.join(", ")}] lies outside the grid`);
    const readBox: Box3 = {
      offsetZyx: [0, 1, 2].map((d) => start[d]! - this.contextZyx[d]!) as Vec3,
      shapeZyx: [0, 1, 2].map((d) => this.blockShapeZyx[d]! + 2 * this.contextZyx[d]!) as Vec3,
    };
    return { index, writeBox, readBox };
  }

  /** The blocks whose writeBox intersects `box`, z slowest. */
  *blocksIntersecting(box: Box3): Generator<Block> {
    const clipped = intersectBoxes(box, this.totalBox);
    if (clipped === undefined) return;
    const { startZyx, endZyx } = chunkRange(clipped, this.blockShapeZyx, this.totalBox.offsetZyx);
    for (const index of chunkIndices(startZyx, endZyx)) yield this.block(index);
  }

  static key(index: Vec3): string {
    return index.join("_");
  }
}
