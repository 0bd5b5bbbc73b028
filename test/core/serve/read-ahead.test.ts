// serve's read-ahead planner on its own: which reads are sequential, and which GETs a read
// starts, over a made-up map (no store, no threads, no clock).

import { describe, expect, it } from 'vitest';
import { geometry } from '../../../src/model/regions.js';
import { type PlannedGet, ReadAhead, type ReadAheadOptions, type Slot } from '../../../src/core/serve/read-ahead.js';

const R = 1024; // region size

/**
 * A volume from a layout, one character a region: a letter is the pack the region is stored in
 * (each pack's regions back to back, in volume order), '.' a zero region. `same` maps a region to
 * an earlier one whose stored bytes it shares (deduplicated).
 */
function volume(layout: string, same: Record<number, number> = {}): { options: Pick<ReadAheadOptions, 'geometry'>; slot: (region: number) => Slot | undefined } {
  const slots: Array<Slot | undefined> = [];
  const used = new Map<string, number>();
  for (const [region, pack] of [...layout].entries()) {
    const shared = same[region];
    if (shared !== undefined) slots.push({ ...slots[shared]!, region });
    else if (pack === '.') slots.push(undefined);
    else {
      const offset = (used.get(pack) ?? 0) * R;
      used.set(pack, (used.get(pack) ?? 0) + 1);
      slots.push({ id: `${pack}@${offset}`, region, pack, offset, stored: R, length: R, digest: new Uint8Array(32).fill(region) });
    }
  }
  return { options: { geometry: geometry(layout.length * R, R) }, slot: (region) => slots[region] };
}

interface Reader {
  ahead: ReadAhead;
  slot: (region: number) => Slot | undefined;
  /** Locations cached or in flight. */
  held: Set<string>;
  prefetching: number;
}

function reader(layout: string, options: Partial<ReadAheadOptions>, same: Record<number, number> = {}): Reader {
  const map = volume(layout, same);
  const ahead = new ReadAhead({ readAheadBytes: 0, fetchUnitBytes: R, prefetchUnitBytes: R, prefetchConcurrency: 8, ...map.options, ...options });
  return { ahead, slot: map.slot, held: new Set(), prefetching: 0 };
}

/** What PitReader does for a read: observe it, collect its misses, plan; the planned GETs then count as in flight. */
function read(r: Reader, offset: number, length: number): PlannedGet[] {
  const observed = r.ahead.observe(offset, length);
  const missing: Slot[] = [];
  for (let region = observed.first; region <= observed.last; region++) {
    const slot = r.slot(region);
    if (slot !== undefined && !r.held.has(slot.id)) missing.push(slot);
  }
  const gets = r.ahead.plan(observed, missing, { slot: r.slot, held: (id) => r.held.has(id), prefetching: r.prefetching });
  for (const get of gets) for (const slot of get.slots) r.held.add(slot.id);
  return gets;
}

/** The GETs as regions, with whether a read waits for each. */
const shape = (gets: PlannedGet[]): Array<{ regions: number[]; prefetch: boolean; ahead: number }> =>
  gets.map((get) => ({ regions: get.slots.map((slot) => slot.region), prefetch: get.prefetch, ahead: get.ahead }));

describe('ReadAhead.observe', () => {
  it('calls a read sequential when it starts where one of the last 16 reads ended, in any order', () => {
    const { ahead } = reader('A'.repeat(64), {});
    expect(ahead.observe(0, 100).sequential).toBe(false);
    expect(ahead.observe(100, 100).sequential).toBe(true);
    // Pipelined: two streams, their reads interleaved.
    expect(ahead.observe(10 * R, 10).sequential).toBe(false);
    expect(ahead.observe(30 * R, 10).sequential).toBe(false);
    expect(ahead.observe(30 * R + 10, 10).sequential).toBe(true);
    expect(ahead.observe(10 * R + 10, 10).sequential).toBe(true);
    // An end 16 reads back is forgotten.
    const end = 50 * R;
    ahead.observe(end - 10, 10);
    for (let i = 0; i < 16; i++) ahead.observe(i * 7, 1);
    expect(ahead.observe(end, 10).sequential).toBe(false);
  });

  it('names the regions a read covers, and for a sequential one the end of the window after it', () => {
    const { ahead } = reader('A'.repeat(16), { readAheadBytes: 4 * R + 1 });
    expect(ahead.observe(R - 1, 2)).toEqual({ first: 0, last: 1, sequential: false, windowEnd: 1 });
    expect(ahead.observe(R + 1, R)).toEqual({ first: 1, last: 2, sequential: true, windowEnd: 7 });
    // The window ends with the volume.
    ahead.observe(13 * R, 10);
    expect(ahead.observe(13 * R + 10, 10)).toEqual({ first: 13, last: 13, sequential: true, windowEnd: 15 });
  });
});

describe('ReadAhead.plan', () => {
  it('fetches what a random read misses in GETs of up to fetchUnitBytes, neighbours in a pack merged, nothing ahead', () => {
    const r = reader('AAAAB.BA', { readAheadBytes: 4 * R, fetchUnitBytes: 2 * R, prefetchUnitBytes: 4 * R });
    const gets = read(r, 0, 8 * R);
    // Regions 4 and 6 lie back to back in pack B, the zero region between them is no obstacle.
    expect(shape(gets)).toEqual([
      { regions: [0, 1], prefetch: false, ahead: 0 },
      { regions: [2, 3], prefetch: false, ahead: 0 },
      { regions: [4, 6], prefetch: false, ahead: 0 },
      { regions: [7], prefetch: false, ahead: 0 },
    ]);
    expect(gets[2]!.range).toEqual({
      pack: 'B',
      offset: 0,
      length: 2 * R,
      stored: 2 * R,
      slices: [
        { at: 0, length: R, storedAt: 0, storedLength: R, digest: r.slot(4)!.digest, regions: [4] },
        { at: R, length: R, storedAt: R, storedLength: R, digest: r.slot(6)!.digest, regions: [6] },
      ],
    });
    // Cached regions cost nothing.
    expect(read(r, 0, 8 * R)).toEqual([]);
  });

  it('fetches what a sequential read misses with the window after it, in GETs of prefetchUnitBytes; a small GET at the edge waits to be a whole one', () => {
    const r = reader('A'.repeat(16), { readAheadBytes: 4 * R, fetchUnitBytes: R, prefetchUnitBytes: 4 * R });
    expect(shape(read(r, 0, R))).toEqual([{ regions: [0], prefetch: false, ahead: 0 }]);
    // Sequential: the first GET holds the miss and as much of the window as fits; region 5, the
    // window's last, would be a GET of one region: it waits for the window to move on.
    expect(shape(read(r, R, R))).toEqual([{ regions: [1, 2, 3, 4], prefetch: false, ahead: 3 }]);
    // Now 5 and 6 make a GET of half the window, which is worth one.
    expect(shape(read(r, 2 * R, R))).toEqual([{ regions: [5, 6], prefetch: true, ahead: 2 }]);
    expect(shape(read(r, 3 * R, R))).toEqual([]);
    expect(shape(read(r, 4 * R, R))).toEqual([{ regions: [7, 8], prefetch: true, ahead: 2 }]);
  });

  it('starts a small GET at once when it cannot grow: zeros or the volume end follow it up to the edge', () => {
    const zeros = reader('AAA.....AAAA', { readAheadBytes: 4 * R, prefetchUnitBytes: 4 * R });
    zeros.held.add(zeros.slot(0)!.id).add(zeros.slot(1)!.id);
    zeros.ahead.observe(0, R);
    expect(shape(read(zeros, R, R))).toEqual([{ regions: [2], prefetch: true, ahead: 1 }]);

    const end = reader('AAAA', { readAheadBytes: 8 * R, prefetchUnitBytes: 8 * R });
    end.held.add(end.slot(0)!.id).add(end.slot(1)!.id);
    end.ahead.observe(0, R);
    expect(shape(read(end, R, R))).toEqual([{ regions: [2, 3], prefetch: true, ahead: 2 }]);
  });

  it('starts GETs no read waits for only while fewer than prefetchConcurrency run, and a read\'s own always', () => {
    // Alternating packs: no two neighbours merge, every region is a GET of its own.
    const layout = 'AB'.repeat(8);
    const r = reader(layout, { readAheadBytes: 6 * R, prefetchUnitBytes: 6 * R, prefetchConcurrency: 2 });
    r.prefetching = 1;
    r.ahead.observe(0, R);
    expect(shape(read(r, R, R))).toEqual([
      { regions: [1], prefetch: false, ahead: 0 },
      { regions: [2], prefetch: true, ahead: 1 },
    ]);
    const busy = reader(layout, { readAheadBytes: 6 * R, prefetchUnitBytes: 6 * R, prefetchConcurrency: 2 });
    busy.prefetching = 2;
    busy.ahead.observe(0, R);
    expect(shape(read(busy, R, R))).toEqual([{ regions: [1], prefetch: false, ahead: 0 }]);
    // What was left is asked for again by the next sequential read.
    busy.prefetching = 0;
    expect(shape(read(busy, 2 * R, R))).toEqual([
      { regions: [2], prefetch: false, ahead: 0 },
      { regions: [3], prefetch: true, ahead: 1 },
      { regions: [4], prefetch: true, ahead: 1 },
    ]);
  });

  it('fetches a region stored once but used twice once, in a read and in the window', () => {
    // Region 3 holds region 0's bytes, region 6 region 4's.
    const r = reader('AAB.BBA.', { readAheadBytes: 4 * R, fetchUnitBytes: 2 * R, prefetchUnitBytes: 4 * R }, { 3: 0, 6: 4 });
    expect(shape(read(r, 0, 4 * R))).toEqual([
      { regions: [0, 1], prefetch: false, ahead: 0 },
      { regions: [2], prefetch: false, ahead: 0 },
    ]);
    // Sequential: region 4 and the window 5..7, in which 6 is 4 again and 7 is zeros.
    expect(shape(read(r, 4 * R, R))).toEqual([{ regions: [4, 5], prefetch: false, ahead: 1 }]);
  });
});
