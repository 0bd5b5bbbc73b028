// serve's read-ahead planner: which reads are sequential, and which stored regions a read fetches
// in which ranged GETs. Pure (no I/O, no clock): the reader says what the map holds and what is
// cached or on its way, and starts the GETs planned, in order.
//
// A read that starts where one of the last few ended is sequential (clients pipeline, so reads
// end out of order). A random read fetches what it misses, neighbours in a pack merged into GETs
// of up to fetchUnitBytes. A sequential read fetches what it misses together with the next
// readAheadBytes, in GETs of up to prefetchUnitBytes: the first holds what the read misses and
// always starts; GETs no read waits for only while fewer than prefetchConcurrency are running.

import { type Geometry, regionLength } from '../../model/regions.js';
import { type FetchRange, type WantedRegion, composedRange } from '../region-fetcher.js';

/** A stored region; `id` names where it is stored, which deduplicated regions share. */
export interface Slot extends WantedRegion {
  id: string;
}

export interface ReadAheadOptions {
  geometry: Geometry;
  /** Bytes after a sequential read that are fetched ahead of it; 0: none. */
  readAheadBytes: number;
  /** Largest GET of a random read. */
  fetchUnitBytes: number;
  /** Largest GET of a sequential read (what it misses and the window after it). */
  prefetchUnitBytes: number;
  /** GETs no read waits for, running at once. */
  prefetchConcurrency: number;
}

/** A read as the planner sees it: the regions it covers, and the ones its map pages must cover. */
export interface ObservedRead {
  first: number;
  last: number;
  sequential: boolean;
  /** The last region of the read-ahead window (`last` for a random read). */
  windowEnd: number;
}

/** What the reader knows when it plans a read's GETs. */
export interface ReaderState {
  /** The region's stored location, or undefined for a zero region (regions up to windowEnd). */
  slot(region: number): Slot | undefined;
  /** Whether a stored location is cached or a GET of it is in flight. */
  held(id: string): boolean;
  /** GETs no read waits for that are running now. */
  prefetching: number;
}

/** One ranged GET to start. */
export interface PlannedGet {
  /** One slice a slot, in the slots' order. */
  range: FetchRange;
  slots: Slot[];
  /** No read waits for it: it counts against prefetchConcurrency while it runs. */
  prefetch: boolean;
  /** Slots in it that no read asked for (fetched ahead). */
  ahead: number;
}

/** How many recent read ends are remembered to recognise sequential reads (clients pipeline). */
const RECENT_ENDS = 16;

export class ReadAhead {
  private readonly recentEnds: number[] = [];

  constructor(private readonly options: ReadAheadOptions) {}

  /** Takes note of a read of [offset, offset + length) (length > 0): whether it is sequential, and its regions. */
  observe(offset: number, length: number): ObservedRead {
    const g = this.options.geometry;
    const end = offset + length;
    const first = Math.floor(offset / g.regionSize);
    const last = Math.floor((end - 1) / g.regionSize);
    const sequential = this.recentEnds.includes(offset);
    this.recentEnds.push(end);
    if (this.recentEnds.length > RECENT_ENDS) this.recentEnds.shift();
    const windowEnd = sequential ? Math.min(g.regionCount - 1, last + Math.ceil(this.options.readAheadBytes / g.regionSize)) : last;
    return { first, last, sequential, windowEnd };
  }

  /**
   * The GETs to start, in order, for a read that misses `missing` (in volume order; neither held
   * nor in any other GET): for a sequential read with the read-ahead window's slots after them.
   */
  plan(read: ObservedRead, missing: Slot[], state: ReaderState): PlannedGet[] {
    const demand = new Set(missing.map((slot) => slot.id));
    if (!read.sequential) return this.gets(missing, this.options.fetchUnitBytes, demand, undefined, state);
    const ahead = this.window(read.last, state);
    return this.gets([...missing, ...ahead.slots], this.options.prefetchUnitBytes, demand, ahead.growsAt, state);
  }

  /**
   * Regions after `last` up to the read-ahead window that are neither held nor repeated, and the
   * window's last region if the window could still move on past it (not at the volume's end).
   */
  private window(last: number, state: ReaderState): { slots: Slot[]; growsAt: number | undefined } {
    const { geometry: g, readAheadBytes } = this.options;
    if (readAheadBytes === 0) return { slots: [], growsAt: undefined };
    const wanted: Slot[] = [];
    const seen = new Set<string>();
    let bytes = 0;
    let region = last + 1;
    for (; region < g.regionCount && bytes < readAheadBytes; region++) {
      bytes += regionLength(g, region);
      const slot = state.slot(region);
      if (slot === undefined || seen.has(slot.id) || state.held(slot.id)) continue;
      seen.add(slot.id);
      wanted.push(slot);
    }
    return { slots: wanted, growsAt: region >= g.regionCount ? undefined : region - 1 };
  }

  /**
   * The slots (demand ones first, then in volume order) in GETs: neighbours in one pack merge
   * into one GET of up to `unitBytes`. A GET holding a `demand` slot always starts; pure
   * prefetches only while fewer than prefetchConcurrency are running, the rest are left for the
   * next sequential read to ask for again. A last pure-prefetch GET that ends at `growsAt` (the
   * window's edge, which the next reads move on) and is small (less than a unit, or than half the
   * window when that is smaller) waits until the window has moved far enough to fill it:
   * otherwise each read would extend the window by a region and every read-ahead GET would be one
   * region long. A small GET that cannot grow (zeros, held or repeated regions follow it up to the
   * edge) starts at once.
   */
  private gets(slots: Slot[], unitBytes: number, demand: ReadonlySet<string>, growsAt: number | undefined, state: ReaderState): PlannedGet[] {
    const planned: PlannedGet[] = [];
    let prefetching = state.prefetching;
    const taken = new Set<string>();
    let unit: Slot[] = [];
    let bytes = 0;
    const flush = (): boolean => {
      if (unit.length === 0) return true;
      const ahead = unit.filter((slot) => !demand.has(slot.id)).length;
      const prefetch = ahead === unit.length;
      if (prefetch && prefetching >= this.options.prefetchConcurrency) return false;
      if (prefetch) prefetching++;
      planned.push({ range: rangeOf(unit), slots: unit, prefetch, ahead });
      unit = [];
      bytes = 0;
      return true;
    };
    for (const slot of slots) {
      // A deduplicated region already in a GET of this plan.
      if (taken.has(slot.id)) continue;
      const previous = unit.at(-1);
      // Composed regions (a base with patches) go together into composed ranges; stored ones
      // into GETs of their pack's neighbours.
      const joins =
        previous !== undefined &&
        bytes + slot.length <= unitBytes &&
        (slot.compose !== undefined
          ? previous.compose !== undefined
          : previous.compose === undefined && previous.pack === slot.pack && previous.offset + previous.stored === slot.offset);
      if (!joins && !flush()) return planned;
      taken.add(slot.id);
      unit.push(slot);
      bytes += slot.length;
    }
    const worthAGet = Math.min(unitBytes, Math.floor(this.options.readAheadBytes / 2));
    const canGrow = growsAt !== undefined && unit.at(-1)?.region === growsAt;
    if (canGrow && bytes < worthAGet && !unit.some((slot) => demand.has(slot.id))) return planned;
    flush();
    return planned;
  }
}

/** The ranged GET of slots that lie back to back in one pack (or the composed range of composed slots): one slice each. */
function rangeOf(slots: Slot[]): FetchRange {
  const head = slots[0]!;
  if (head.compose !== undefined) return composedRange(slots, { oneRegionPerSlice: true });
  let at = 0;
  let storedAt = 0;
  const slices = slots.map((slot) => {
    const slice = { at, length: slot.length, storedAt, storedLength: slot.stored, digest: slot.digest, regions: [slot.region] };
    at += slot.length;
    storedAt += slot.stored;
    return slice;
  });
  return { pack: head.pack, offset: head.offset, length: at, stored: storedAt, slices };
}
