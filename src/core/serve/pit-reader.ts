// PitReader: the reads of one served point in time, wired together. A read maps its byte range
// to regions: zero regions are shared zeros without a request, cached ones come from the
// RegionCache, and what is neither cached nor in flight is fetched in the GETs the ReadAhead
// planner makes of it (with the read-ahead window, for a sequential read), each one
// RegionFetcher.fetch into a buffer of the cache's. Concurrent reads of one region share one
// fetch. Bytes that do not match their digest are never served: the read fails with EIO and a
// log line; should the verifying threads die, digests are checked on the main thread from then on.

import { AbortedError, CdpError, IntegrityError } from '../../errors.js';
import type { PitPage } from '../../model/pages.js';
import { type Geometry, regionLength, storedId } from '../../model/regions.js';
import { NbdRequestError, type ReadViews } from '../../nbd/types.js';
import type { PitView } from '../../repo/pit-view.js';
import type { Repository } from '../../repo/repository.js';
import { RegionPool } from '../../volume/region-pool.js';
import { RegionFetcher, integrityError, wantedRegion } from '../region-fetcher.js';
import { type PlannedGet, ReadAhead, type Slot } from './read-ahead.js';
import { RegionCache } from './region-cache.js';

export const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024;
// Eight GETs of 8 MiB in flight, as restore keeps: a single reader waits on the store's latency
// otherwise (measured on s3rver with one request at a time: 1.16 s → 1.02 s for 256 MiB).
export const DEFAULT_READ_AHEAD_BYTES = 64 * 1024 * 1024;
const DEFAULT_FETCH_UNIT_BYTES = 2 * 1024 * 1024;
const DEFAULT_PREFETCH_UNIT_BYTES = 8 * 1024 * 1024;
const DEFAULT_PREFETCH_CONCURRENCY = 8;
/** Pages of the map kept at hand for reads (each read loads the ones it needs first). */
const PAGES_AT_HAND = 64;

export interface PitReaderOptions {
  /** Bytes of verified regions kept in memory. Default 256 MiB; 0 caches nothing. */
  cacheBytes?: number;
  /** Bytes prefetched ahead of sequential reads. Default 64 MiB (at most half the cache); 0 turns read-ahead off. */
  readAheadBytes?: number;
  /** Background prefetch GETs in flight at once. Default 8. */
  prefetchConcurrency?: number;
  /** Largest ranged GET for a read's own regions (neighbours in a pack are merged up to it). Default 2 MiB, at least one region. */
  fetchUnitBytes?: number;
  /** Largest ranged GET for read-ahead (the missing regions of a sequential read and the window after). Default 8 MiB, at least fetchUnitBytes. */
  prefetchUnitBytes?: number;
  /** Threads that verify digests. Default one per core. */
  workers?: number;
  /** Where failed reads are reported (one line each). */
  log?: (line: string) => void;
  /**
   * The point's map is opened afresh (from the chain as it is then) once it is this old, default
   * 1 h: a prune deletes the runs and packs a compaction or repack replaced only after its grace
   * (at least 1 h while a writer runs), so a long-running serve keeps reading.
   */
  reopenAfterMs?: number;
  /** ms since the epoch; tests inject one. */
  clock?: () => number;
}

export interface PitExportStats {
  /** Ranged GETs of pack bytes (demand and prefetch). */
  gets: number;
  bytesFetched: number;
  /** Regions served from the cache or from a fetch already in flight. */
  cacheHits: number;
  /** Regions a read had to fetch itself. */
  cacheMisses: number;
  /** Regions fetched by read-ahead. */
  prefetched: number;
  /** Regions whose bytes did not match their digest. */
  integrityErrors: number;
  cachedBytes: number;
  /** GETs that read into a buffer an evicted cache entry gave back (instead of a new one). */
  fetchBuffersReused: number;
}

/** What every export name of one point in time shares: the map, the cache and the fetches. */
export class PitReader {
  readonly geometry: Geometry;
  private readonly counts = { cacheHits: 0, cacheMisses: 0, prefetched: 0, integrityErrors: 0 };
  private readonly cache: RegionCache;
  /** Stored locations a GET is on its way for: each settles into the cache (or fails). */
  private readonly inFlight = new Map<string, Promise<Uint8Array>>();
  private readonly readAhead: ReadAhead;
  private readonly pool: RegionPool;
  private readonly fetcher: RegionFetcher;
  private readonly abort = new AbortController();
  private readonly log: (line: string) => void;
  /** GETs running that no read waits for. */
  private prefetching = 0;
  private zeroRegion: Uint8Array | undefined;
  private closed = false;
  /** Pages of the map the reads in progress use, most recent last. */
  private readonly pagesAtHand = new Map<number, PitPage>();
  /** Pages of the map as last opened; pages at hand that are not are loaded again before use. */
  private current = new WeakSet<PitPage>();
  private view: PitView;
  private openedAt: number;
  private reopening: Promise<void> | undefined;
  private readonly clock: () => number;
  private readonly reopenAfterMs: number;

  constructor(
    readonly repo: Repository,
    pit: PitView,
    readonly seq: number,
    options: PitReaderOptions,
  ) {
    this.view = pit;
    this.clock = options.clock ?? Date.now;
    this.openedAt = this.clock();
    this.reopenAfterMs = options.reopenAfterMs ?? 3_600_000;
    this.geometry = repo.geometry;
    const cacheBytes = nonNegative(options.cacheBytes ?? DEFAULT_CACHE_BYTES, 'cacheBytes');
    // Prefetched regions wait in the cache; a window the cache cannot hold would be thrown away.
    const readAheadBytes = Math.min(nonNegative(options.readAheadBytes ?? DEFAULT_READ_AHEAD_BYTES, 'readAheadBytes'), Math.floor(cacheBytes / 2));
    const prefetchConcurrency = Math.max(1, options.prefetchConcurrency ?? DEFAULT_PREFETCH_CONCURRENCY);
    const fetchUnitBytes = Math.max(this.geometry.regionSize, options.fetchUnitBytes ?? DEFAULT_FETCH_UNIT_BYTES);
    // Read-ahead GETs are larger (fewer requests; an object store's cost is mostly per request),
    // but never below a demand GET.
    const prefetchUnitBytes = Math.max(fetchUnitBytes, options.prefetchUnitBytes ?? DEFAULT_PREFETCH_UNIT_BYTES);
    this.readAhead = new ReadAhead({ geometry: this.geometry, readAheadBytes, fetchUnitBytes, prefetchUnitBytes, prefetchConcurrency });
    // Spare buffers: up to what the read-ahead window and the GETs in flight can use.
    this.cache = new RegionCache(cacheBytes, readAheadBytes + prefetchConcurrency * prefetchUnitBytes);
    this.log = options.log ?? (() => {});
    this.pool = new RegionPool(options.workers, repo.identity);
    this.fetcher = new RegionFetcher(repo, this.pool, {
      signal: this.abort.signal,
      // Serving goes on, verified on this thread.
      onPoolFailure: (error) => this.log(`serve: the verifying threads failed (${error.message}); verifying on the main thread from now on`),
    });
  }

  /** The counts as of now. */
  get stats(): PitExportStats {
    return {
      gets: this.fetcher.gets,
      bytesFetched: this.fetcher.bytesFetched,
      ...this.counts,
      cachedBytes: this.cache.cachedBytes,
      fetchBuffersReused: this.cache.fetchBuffersReused,
    };
  }

  /** Whether any GET (for a read or ahead of reads) is still running. */
  get fetching(): boolean {
    return this.inFlight.size > 0 || this.prefetching > 0;
  }

  /** Fills `target` with the bytes at [offset, offset + target.length). */
  async readInto(offset: number, target: Uint8Array): Promise<void> {
    await this.deliver(offset, target.length, (at, bytes) => target.set(bytes, at));
  }

  /**
   * The bytes at [offset, offset + length) as views of cached (or fetched) regions and of shared
   * zeros, no copy. The buffers they are views of are pinned (not recycled) until release().
   */
  async readViews(offset: number, length: number): Promise<ReadViews> {
    const views: Uint8Array[] = [];
    const pinned: ArrayBufferLike[] = [];
    const unpinAll = (): void => {
      for (const buffer of pinned.splice(0)) this.cache.unpin(buffer);
    };
    try {
      await this.deliver(offset, length, (_at, bytes, index) => {
        views[index] = bytes;
        if (bytes.buffer !== this.zeros.buffer) {
          this.cache.pin(bytes.buffer);
          pinned.push(bytes.buffer);
        }
      });
    } catch (error) {
      unpinAll();
      throw error;
    }
    return { views, release: unpinAll };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.cache.close();
    this.abort.abort(new AbortedError('the export is closed'));
    await Promise.allSettled([...this.inFlight.values()]);
    await this.pool.close();
  }

  /**
   * Hands each piece of the read to `take` (its position in the read, its bytes, its index in
   * order): at once for zeros and cached regions, otherwise in the reaction to its fetch,
   * registered here. A fetch buffer is recycled only after the microtask checkpoint that settles
   * it and never while pinned, so `take` may copy or pin, but must not keep a view otherwise.
   */
  private async deliver(offset: number, length: number, take: (at: number, bytes: Uint8Array, index: number) => void): Promise<void> {
    if (this.closed) throw new NbdRequestError('ESHUTDOWN', 'the export is closed');
    if (length === 0) return;
    const g = this.geometry;
    const end = offset + length;
    const read = this.readAhead.observe(offset, length);
    const { first, last } = read;
    // The map's pages for this read and its read-ahead window; from here on no await until the
    // fetches are registered, so concurrent reads share them.
    await this.loadPages(first, read.windowEnd);
    if (this.closed) throw new NbdRequestError('ESHUTDOWN', 'the export is closed');

    // Fetch what is neither cached nor in flight (merged GETs).
    const slots: Array<Slot | undefined> = [];
    const missing: Slot[] = [];
    for (let region = first; region <= last; region++) {
      const slot = this.slot(region);
      slots.push(slot);
      if (slot === undefined) continue;
      if (this.held(slot.id)) this.counts.cacheHits++;
      else {
        this.counts.cacheMisses++;
        missing.push(slot);
      }
    }
    const state = { slot: (region: number) => this.slot(region), held: (id: string) => this.held(id), prefetching: this.prefetching };
    for (const get of this.readAhead.plan(read, missing, state)) this.start(get);

    const arrivals: Array<Promise<void>> = [];
    for (let i = 0; i < slots.length; i++) {
      const region = first + i;
      const start = region * g.regionSize;
      const from = Math.max(offset, start);
      const to = Math.min(end, start + regionLength(g, region));
      const slot = slots[i];
      if (slot === undefined) {
        take(from - offset, this.zeros.subarray(0, to - from), i);
        continue;
      }
      const found = this.cache.get(slot.id) ?? this.inFlight.get(slot.id);
      if (found === undefined) {
        // Not expected (every miss was just fetched); still let what was registered settle first.
        arrivals.push(Promise.reject(new NbdRequestError('EIO', `region ${region} was neither cached nor fetched`)));
        break;
      }
      if (found instanceof Uint8Array) take(from - offset, found.subarray(from - start, to - start), i);
      else {
        arrivals.push(
          found.then(
            (data) => take(from - offset, data.subarray(from - start, to - start), i),
            (error: unknown) => {
              throw this.failed(region, error);
            },
          ),
        );
      }
    }
    // All settle before the read does: nothing is handed to `take` after this returns.
    const failure = (await Promise.allSettled(arrivals)).find((r) => r.status === 'rejected');
    if (failure !== undefined) throw failure.reason;
  }

  /** One region of zeros, shared by every read of zero regions (never recycled). */
  private get zeros(): Uint8Array {
    return (this.zeroRegion ??= new Uint8Array(this.geometry.regionSize));
  }

  /** Whether a stored location is cached or on its way. */
  private held(id: string): boolean {
    return this.cache.has(id) || this.inFlight.has(id);
  }

  /** The point's map, as last opened. */
  get pit(): PitView {
    return this.view;
  }

  /** Opens the point's map afresh: the same point, from the chain's runs as they are now (compacted, repacked). */
  private reopen(): Promise<void> {
    return (this.reopening ??= (async () => {
      try {
        const view = await this.repo.view(await this.repo.index(), this.seq);
        this.view = view;
        this.current = new WeakSet();
        this.openedAt = this.clock();
      } catch (error) {
        // Reads go on from the map as it was (its objects outlive the grace); tried again in a minute.
        this.log(`serve: opening point ${this.seq} afresh failed (${(error as Error).message}); trying again in a minute`);
        this.openedAt = this.clock() - this.reopenAfterMs + 60_000;
      } finally {
        this.reopening = undefined;
      }
    })());
  }

  /** Makes the pages holding regions [first, last] at hand (without waiting when they are). */
  private loadPages(first: number, last: number): Promise<void> | undefined {
    if (this.clock() - this.openedAt >= this.reopenAfterMs) return this.reopen().then(() => this.loadPages(first, last));
    const from = this.pit.pageOf(first);
    const to = this.pit.pageOf(last);
    const wanted: number[] = [];
    for (let page = from; page <= to; page++) {
      const held = this.pagesAtHand.get(page);
      if (held === undefined || !this.current.has(held)) wanted.push(page);
      else {
        this.pagesAtHand.delete(page);
        this.pagesAtHand.set(page, held);
      }
    }
    if (wanted.length === 0) return undefined;
    const view = this.view;
    return Promise.all(wanted.map((page) => view.page(page))).then((pages) => {
      for (const page of pages) {
        this.pagesAtHand.delete(page.page);
        this.pagesAtHand.set(page.page, page);
        if (view === this.view) this.current.add(page);
      }
      const keep = Math.max(PAGES_AT_HAND, to - from + 1);
      for (const oldest of this.pagesAtHand.keys()) {
        if (this.pagesAtHand.size <= keep) break;
        this.pagesAtHand.delete(oldest);
      }
    });
  }

  /** Where the region's bytes are stored, or undefined for a zero region (its page is at hand). */
  private slot(region: number): Slot | undefined {
    const page = this.pagesAtHand.get(this.pit.pageOf(region));
    if (page === undefined) throw new NbdRequestError('EIO', `the map page of region ${region} is not loaded`);
    const stored = page.stored(region);
    if (stored === undefined) return undefined;
    return { id: storedId(stored), ...wantedRegion(region, stored, regionLength(this.geometry, region), page.digest(region)) };
  }

  /** Starts a planned GET; each of its slots is in flight until it is cached (or failed). */
  private start(get: PlannedGet): void {
    const { range, slots, prefetch } = get;
    if (prefetch) this.prefetching++;
    const fetched = (async (): Promise<Array<Uint8Array | Error>> => {
      const { bytes, mismatches, missing } = await this.fetcher.fetch(range, { into: this.cache.takeBuffer(range.length), reportDamage: true });
      if (missing !== undefined) throw missing;
      this.counts.prefetched += get.ahead;
      const bad = new Map(mismatches.map((m) => [m.slice, m]));
      return range.slices.map((slice, i) => {
        const mismatch = bad.get(i);
        // Views of one buffer: the cache counts the buffer once and frees it with its last view.
        return mismatch === undefined ? bytes!.subarray(slice.at, slice.at + slice.length) : integrityError(range, mismatch);
      });
    })();
    slots.forEach((slot, i) => {
      const one = fetched.then((parts) => {
        const part = parts[i]!;
        if (part instanceof Error) throw part;
        return part;
      });
      this.inFlight.set(slot.id, one);
      // Settle the cache and the in-flight map in one step, so a reader always finds one of them.
      one.then(
        (bytes) => {
          if (this.inFlight.get(slot.id) === one) this.inFlight.delete(slot.id);
          this.cache.remember(slot.id, bytes);
        },
        () => {
          if (this.inFlight.get(slot.id) === one) this.inFlight.delete(slot.id);
        },
      );
    });
    fetched
      .catch(() => {})
      .finally(() => {
        if (prefetch) this.prefetching--;
      });
  }

  private failed(region: number, error: unknown): NbdRequestError {
    if (error instanceof NbdRequestError) return error;
    if (this.closed) return new NbdRequestError('ESHUTDOWN', 'the export is closed');
    if (error instanceof IntegrityError) {
      this.counts.integrityErrors++;
      this.log(`serve: point in time ${this.seq}, ${error.message}; answered EIO (other points in time may still be intact: see cdp-s3 log)`);
      return new NbdRequestError('EIO', error.message);
    }
    const message = error instanceof Error ? error.message : String(error);
    this.log(`serve: point in time ${this.seq}, reading region ${region} failed: ${message}; answered EIO`);
    return new NbdRequestError('EIO', message);
  }
}

function nonNegative(value: number, name: string): number {
  if (!Number.isSafeInteger(value) || value < 0) throw new CdpError('INVALID_ARGUMENT', `${name} must be a whole number of bytes, got ${value}`);
  return value;
}
