// The --changed input format: one "offset length" pair a line (decimal bytes), as an external
// change tracker would write it. Blank lines and lines starting with # are ignored.

import { UsageError } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import { type Geometry, regionLength } from '../model/regions.js';
import { emptyBlocks, markBlocks } from '../model/patches.js';

export interface ByteRange {
  offset: number;
  length: number;
}

export function parseChangedRanges(text: string, source = '--changed'): ByteRange[] {
  const ranges: ByteRange[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^(\d+)\s+(\d+)$/.exec(line);
    const offset = Number(m?.[1]);
    const length = Number(m?.[2]);
    if (m === null || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length)) {
      throw new UsageError(`${source} line ${i + 1}: expected "OFFSET LENGTH" in bytes, got ${JSON.stringify(line.slice(0, 60))}`);
    }
    ranges.push({ offset, length });
  });
  return ranges;
}

/** The regions the byte ranges touch; a range past the end of the volume is an error. */
export function regionsOfRanges(ranges: ByteRange[], g: Geometry): DeltaMap {
  const map = new DeltaMap(g.regionCount);
  for (const { offset, length } of ranges) {
    if (offset + length > g.volumeSize) {
      map.dispose();
      throw new UsageError(`changed range ${offset}+${length} ends past the volume's ${g.volumeSize} bytes`);
    }
    if (length > 0) map.setRange(Math.floor(offset / g.regionSize), Math.ceil((offset + length) / g.regionSize));
  }
  return map;
}

/**
 * The blocks of each region that the changed ranges touch (the only ones an external tracker
 * says were written), asked for in ascending region order, so a backup can store them as a
 * patch of the region's previous version.
 */
export class RangeBlocks {
  private readonly ranges: ByteRange[];
  private next = 0;

  constructor(
    ranges: readonly ByteRange[],
    private readonly geometry: Geometry,
    private readonly blockSize: number,
  ) {
    this.ranges = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  }

  /** The block bitmap of `region` (regions asked for in ascending order). */
  of(region: number): Uint8Array {
    const g = this.geometry;
    const start = region * g.regionSize;
    const length = regionLength(g, region);
    const end = start + length;
    while (this.next < this.ranges.length && this.ranges[this.next]!.offset + this.ranges[this.next]!.length <= start) this.next++;
    const blocks = emptyBlocks(length, this.blockSize);
    for (let i = this.next; i < this.ranges.length && this.ranges[i]!.offset < end; i++) {
      const { offset, length: n } = this.ranges[i]!;
      markBlocks(blocks, Math.max(offset, start) - start, Math.min(offset + n, end) - start, this.blockSize);
    }
    return blocks;
  }
}
