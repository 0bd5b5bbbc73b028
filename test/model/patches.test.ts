// Patches on their own: encoding the changed blocks of a region, applying them to the previous
// version, and refusing patches of the wrong shape.

import { describe, expect, it } from 'vitest';
import {
  PATCH_DIGEST_BYTES,
  allBlocks,
  applyPatch,
  bitmapBytes,
  blocksIn,
  emptyBlocks,
  encodePatch,
  markBlocks,
  patchIntact,
  patchLength,
  patchShapeError,
} from '../../src/model/patches.js';
import { seededRandom } from '../helpers/random.js';

describe('patches', () => {
  it('composing a patch of the changed blocks on the previous version gives the new region (random regions, blocks and lengths)', () => {
    const random = seededRandom(7);
    const int = (n: number): number => Math.floor(random() * n);
    for (let trial = 0; trial < 300; trial++) {
      const blockSize = 512 << int(4);
      // Whole regions and short last ones (not a multiple of the block size).
      const length = trial % 3 === 0 ? 1 + int(16 * blockSize) : blockSize * (1 + int(32));
      const before = Buffer.alloc(length);
      for (let i = 0; i < length; i++) before[i] = int(256);
      const after = Buffer.from(before);
      const blocks = emptyBlocks(length, blockSize);
      for (let n = int(5); n >= 0; n--) {
        const from = int(length);
        const to = Math.min(length, from + 1 + int(2 * blockSize));
        for (let i = from; i < to; i++) after[i] = int(256);
        markBlocks(blocks, from, to, blockSize);
      }
      const patch = encodePatch(after, blocks, blockSize);
      expect(patch.length).toBe(patchLength(blocks, length, blockSize));
      expect(patchShapeError(patch, length, blockSize)).toBeUndefined();
      expect(patchIntact(patch)).toBe(true);
      const composed = Buffer.from(before);
      applyPatch(composed, patch, blockSize);
      expect(composed.equals(after), `trial ${trial}`).toBe(true);
    }
  });

  it('block geometry: a short last block, marking ranges, a full bitmap', () => {
    expect(blocksIn(10_000, 4096)).toBe(3);
    expect(bitmapBytes(10_000, 4096)).toBe(1);
    expect(bitmapBytes(64 * 1024, 4096)).toBe(2);
    const blocks = emptyBlocks(64 * 1024, 4096);
    markBlocks(blocks, 4095, 4097, 4096); // two blocks, one byte each
    expect(Array.from(blocks)).toEqual([0b11, 0]);
    markBlocks(blocks, 100, 100, 4096); // nothing
    expect(Array.from(blocks)).toEqual([0b11, 0]);
    expect(allBlocks(blocks, 64 * 1024, 4096)).toBe(false);
    markBlocks(blocks, 0, 64 * 1024, 4096);
    expect(allBlocks(blocks, 64 * 1024, 4096)).toBe(true);
    // A patch of the short last block of a 10,000-byte region holds 10,000 - 8,192 bytes.
    const last = emptyBlocks(10_000, 4096);
    markBlocks(last, 9_000, 10_000, 4096);
    expect(patchLength(last, 10_000, 4096)).toBe(PATCH_DIGEST_BYTES + 1 + 10_000 - 8192);
  });

  it('a patch of the wrong shape or with other bytes is refused, not applied past its region', () => {
    const region = Buffer.alloc(8192, 1);
    const blocks = emptyBlocks(8192, 4096);
    markBlocks(blocks, 0, 1, 4096);
    const patch = encodePatch(Buffer.alloc(8192, 2), blocks, 4096);
    expect(patchShapeError(patch.subarray(0, patch.length - 1), 8192, 4096)).toMatch(/bitmap needs/);
    expect(patchShapeError(patch.subarray(0, 20), 8192, 4096)).toMatch(/shorter than its header/);
    const pastEnd = Buffer.from(patch);
    pastEnd[PATCH_DIGEST_BYTES]! |= 0b100; // block 2 of a two-block region
    expect(patchShapeError(pastEnd, 8192, 4096)).toMatch(/past the end/);
    expect(() => applyPatch(region, pastEnd, 4096)).toThrow(/past the end/);
    const flipped = Buffer.from(patch);
    flipped[patch.length - 1]! ^= 1;
    expect(patchIntact(flipped)).toBe(false);
    expect(region.every((b) => b === 1)).toBe(true);
  });
});
