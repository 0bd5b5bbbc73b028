// The --changed input format: one "offset length" pair a line (decimal bytes), as an external
// change tracker would write it. Blank lines and lines starting with # are ignored.

import { UsageError } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import type { Geometry } from '../model/regions.js';

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
