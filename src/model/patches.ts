// Patches: a region stored as the blocks that changed since its previous stored version, on top
// of that version. A region is cut into blocks of the repository's block size (the last block of
// a short last region is shorter). A patch is one blob in a pack:
//
//   offset 0      32 bytes  SHA-256 of the bytes after it (the patch checks itself)
//   offset 32     B bytes   block bitmap: block i is bit i & 7 of byte i >> 3, B = ceil(blocks / 8)
//   offset 32+B   ...       the set blocks' bytes, ascending, back to back
//
// A region's content is its base (a whole stored copy, or zeros) with its patches applied in
// order; the result is checked against the region's digest before anyone uses it. Pure: no I/O.

import { createHash } from 'node:crypto';

export const PATCH_DIGEST_BYTES = 32;

/** Blocks in a region of `regionLength` bytes. */
export function blocksIn(regionLength: number, blockSize: number): number {
  return Math.ceil(regionLength / blockSize);
}

/** Bytes of a block bitmap for a region of `regionLength` bytes. */
export function bitmapBytes(regionLength: number, blockSize: number): number {
  return Math.ceil(blocksIn(regionLength, blockSize) / 8);
}

/** A block bitmap with nothing set. */
export function emptyBlocks(regionLength: number, blockSize: number): Uint8Array {
  return new Uint8Array(bitmapBytes(regionLength, blockSize));
}

/** Sets the blocks that bytes [from, to) of the region (offsets within it) touch. */
export function markBlocks(bitmap: Uint8Array, from: number, to: number, blockSize: number): void {
  if (to <= from) return;
  const first = Math.floor(from / blockSize);
  const last = Math.floor((to - 1) / blockSize);
  for (let block = first; block <= last; block++) bitmap[block >> 3]! |= 1 << (block & 7);
}

/** Sets in `into` every block set in `from` (same region). */
export function orBlocks(into: Uint8Array, from: Uint8Array): void {
  for (let i = 0; i < into.length; i++) into[i]! |= from[i]!;
}

/** Whether every block of the region is set (a patch would be the whole region and more). */
export function allBlocks(bitmap: Uint8Array, regionLength: number, blockSize: number): boolean {
  const blocks = blocksIn(regionLength, blockSize);
  for (let block = 0; block < blocks; block++) if ((bitmap[block >> 3]! & (1 << (block & 7))) === 0) return false;
  return true;
}

/** Bytes of a patch holding the blocks `bitmap` sets, for a region of `regionLength` bytes. */
export function patchLength(bitmap: Uint8Array, regionLength: number, blockSize: number): number {
  const blocks = blocksIn(regionLength, blockSize);
  let length = PATCH_DIGEST_BYTES + bitmap.length;
  for (let block = 0; block < blocks; block++) {
    if ((bitmap[block >> 3]! & (1 << (block & 7))) !== 0) length += Math.min(blockSize, regionLength - block * blockSize);
  }
  return length;
}

/** The patch of `region` (the region's bytes now) holding the blocks `bitmap` sets. */
export function encodePatch(region: Uint8Array, bitmap: Uint8Array, blockSize: number): Uint8Array {
  const blocks = blocksIn(region.length, blockSize);
  const out = new Uint8Array(patchLength(bitmap, region.length, blockSize));
  out.set(bitmap, PATCH_DIGEST_BYTES);
  let at = PATCH_DIGEST_BYTES + bitmap.length;
  for (let block = 0; block < blocks; block++) {
    if ((bitmap[block >> 3]! & (1 << (block & 7))) === 0) continue;
    const start = block * blockSize;
    const bytes = region.subarray(start, Math.min(region.length, start + blockSize));
    out.set(bytes, at);
    at += bytes.length;
  }
  out.set(createHash('sha256').update(out.subarray(PATCH_DIGEST_BYTES)).digest(), 0);
  return out;
}

/** Why a patch cannot apply to a region of this length, or undefined. Checks its shape, not its digest. */
export function patchShapeError(patch: Uint8Array, regionLength: number, blockSize: number): string | undefined {
  const bitmapLength = bitmapBytes(regionLength, blockSize);
  if (patch.length < PATCH_DIGEST_BYTES + bitmapLength) return `is ${patch.length} bytes, shorter than its header`;
  const bitmap = patch.subarray(PATCH_DIGEST_BYTES, PATCH_DIGEST_BYTES + bitmapLength);
  const blocks = blocksIn(regionLength, blockSize);
  const spare = bitmapLength * 8 - blocks;
  if (spare > 0 && bitmap[bitmapLength - 1]! >> (8 - spare) !== 0) return 'sets blocks past the end of the region';
  const expected = patchLength(bitmap, regionLength, blockSize);
  if (patch.length !== expected) return `is ${patch.length} bytes, but its bitmap needs ${expected}`;
  return undefined;
}

/** Whether a patch's bytes match the digest it carries. */
export function patchIntact(patch: Uint8Array): boolean {
  if (patch.length < PATCH_DIGEST_BYTES) return false;
  return createHash('sha256').update(patch.subarray(PATCH_DIGEST_BYTES)).digest().equals(patch.subarray(0, PATCH_DIGEST_BYTES));
}

/**
 * Applies a patch to `region` (the region's bytes so far, changed in place). Throws on a patch
 * of the wrong shape, leaving `region` partly changed; its digest check then fails anyway.
 */
export function applyPatch(region: Uint8Array, patch: Uint8Array, blockSize: number): void {
  const shape = patchShapeError(patch, region.length, blockSize);
  if (shape !== undefined) throw new Error(`a patch ${shape}`);
  const blocks = blocksIn(region.length, blockSize);
  const bitmapLength = bitmapBytes(region.length, blockSize);
  const bitmap = patch.subarray(PATCH_DIGEST_BYTES, PATCH_DIGEST_BYTES + bitmapLength);
  let at = PATCH_DIGEST_BYTES + bitmapLength;
  // Runs of set blocks are copied at once (a patch of a sequential write is one run).
  for (let block = 0; block < blocks; ) {
    if ((bitmap[block >> 3]! & (1 << (block & 7))) === 0) {
      block++;
      continue;
    }
    let end = block + 1;
    while (end < blocks && (bitmap[end >> 3]! & (1 << (end & 7))) !== 0) end++;
    const start = block * blockSize;
    const length = Math.min(end * blockSize, region.length) - start;
    region.set(patch.subarray(at, at + length), start);
    at += length;
    block = end;
  }
}
