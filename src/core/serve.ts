// serve: one point in time, read-only over NBD, straight from the repository, so a machine can
// boot or mount it before (or instead of) a full restore.
//
// PitExport is the NBD backend. A read maps its byte range to regions: zero regions are zeros
// without any request; the others are fetched with ranged GETs (neighbouring regions of a pack
// merged into one GET of up to `fetchUnitBytes`), verified against their SHA-256 on a worker
// thread, and kept in an LRU cache keyed by stored location (so deduplicated regions share an
// entry). Concurrent reads of one region share one fetch. A read that starts where a recent one
// ended is sequential: the next `readAheadBytes` are prefetched in the background in GETs of up
// to `prefetchUnitBytes`, at most `prefetchConcurrency` at a time. Bytes that do not match their
// digest are never served: the read fails with EIO and a log line. Writes, trims and zeroing
// fail with EPERM.
//
// The cache holds views of the fetched ranges and counts each range's memory once. The NBD server
// gets a read as views (readViews: no copy; the buffers stay pinned until the reply is written)
// or copied into its own buffer (readInto). A range no cache entry and no reply uses any more is
// recycled for a later GET (a fresh buffer per GET costs page faults on every byte: ~12% of
// serve's CPU, measured), but only after the current microtask checkpoint: a read whose fetch
// just settled takes its bytes in the reaction it registered, before any macrotask. Should the
// verifying threads die, digests are checked on the main thread from then on.

import { AbortedError, CdpError, IntegrityError } from '../errors.js';
import { type Geometry, regionLength } from '../model/pit-map.js';
import type { PitPage } from '../model/pages.js';
import type { PitView } from '../repo/pit-view.js';
import { BufferPool } from '../nbd/buffer-pool.js';
import { NbdServer } from '../nbd/server.js';
import { NbdRequestError, type NbdExport, type ReadViews } from '../nbd/types.js';
import type { Repository } from '../repo/repository.js';
import type { ObjectStore } from '../store/types.js';
import { RegionPool } from '../volume/region-pool.js';
import type { PointSelector } from './points.js';
import { RegionFetcher, integrityError } from './region-fetcher.js';
import { loadPoint } from './restore.js';
import { type PlannedGet, ReadAhead, type Slot } from './serve/read-ahead.js';

export const DEFAULT_CACHE_BYTES = 256 * 1024 * 1024;
// Eight GETs of 8 MiB in flight, as restore keeps: a single reader waits on the store's latency
// otherwise (measured on s3rver with one request at a time: 1.16 s → 1.02 s for 256 MiB).
export const DEFAULT_READ_AHEAD_BYTES = 64 * 1024 * 1024;
const DEFAULT_FETCH_UNIT_BYTES = 2 * 1024 * 1024;
const DEFAULT_PREFETCH_UNIT_BYTES = 8 * 1024 * 1024;
const DEFAULT_PREFETCH_CONCURRENCY = 8;

export interface PitExportOptions {
  store: ObjectStore;
  at: PointSelector;
  /** Take the newest point at or before `at` even if it is suspect or damaged (as restore). */
  allowSuspect?: boolean;
  /** Export name ('' is the default export). */
  name?: string;
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
  /** Cancels opening (choosing the point and loading its map). */
  signal?: AbortSignal;
  now?: number;
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

/** Pages of the map kept at hand for reads (each read loads the ones it needs first). */
const PAGES_AT_HAND = 64;

/** What every export name of one point in time shares: the map, the cache and the fetches. */
class PitReader {
  readonly geometry: Geometry;
  private readonly counts: Omit<PitExportStats, 'gets' | 'bytesFetched'> = { cacheHits: 0, cacheMisses: 0, prefetched: 0, integrityErrors: 0, cachedBytes: 0, fetchBuffersReused: 0 };
  /** Verified regions by stored location, least recently used first: views of fetched ranges. */
  private readonly cache = new Map<string, Uint8Array>();
  /** Fetched ranges the cache holds views of, with how many: memory is counted per range. */
  private readonly backing = new Map<ArrayBufferLike, number>();
  private readonly inFlight = new Map<string, Promise<Uint8Array>>();
  private readonly cacheBytes: number;
  private readonly readAhead: ReadAhead;
  private readonly pool: RegionPool;
  private readonly fetcher: RegionFetcher;
  private readonly abort = new AbortController();
  private readonly log: (line: string) => void;
  private prefetching = 0;
  private zeroRegion: Uint8Array | undefined;
  /** Fetch buffers replies are still being sent from (readViews), with how many. */
  private readonly pins = new Map<ArrayBufferLike, number>();
  /** Fetch buffers no cache entry uses any more: recycled once pending continuations have run. */
  private readonly retired = new Set<ArrayBufferLike>();
  private retiring: NodeJS.Immediate | undefined;
  /** Buffers ready for the next GETs (up to what the read-ahead window and its GETs can use). */
  private readonly spare: BufferPool;
  private closed = false;

  /** Pages of the map the reads in progress use, most recent last. */
  private readonly pagesAtHand = new Map<number, PitPage>();

  constructor(
    readonly repo: Repository,
    readonly pit: PitView,
    readonly seq: number,
    options: Pick<PitExportOptions, 'cacheBytes' | 'readAheadBytes' | 'prefetchConcurrency' | 'fetchUnitBytes' | 'prefetchUnitBytes' | 'workers' | 'log'>,
  ) {
    this.geometry = repo.geometry;
    this.cacheBytes = nonNegative(options.cacheBytes ?? DEFAULT_CACHE_BYTES, 'cacheBytes');
    // Prefetched regions wait in the cache; a window the cache cannot hold would be thrown away.
    const readAheadBytes = Math.min(nonNegative(options.readAheadBytes ?? DEFAULT_READ_AHEAD_BYTES, 'readAheadBytes'), Math.floor(this.cacheBytes / 2));
    const prefetchConcurrency = Math.max(1, options.prefetchConcurrency ?? DEFAULT_PREFETCH_CONCURRENCY);
    const fetchUnitBytes = Math.max(this.geometry.regionSize, options.fetchUnitBytes ?? DEFAULT_FETCH_UNIT_BYTES);
    // Read-ahead GETs are larger (fewer requests; an object store's cost is mostly per request),
    // but never below a demand GET.
    const prefetchUnitBytes = Math.max(fetchUnitBytes, options.prefetchUnitBytes ?? DEFAULT_PREFETCH_UNIT_BYTES);
    this.readAhead = new ReadAhead({ geometry: this.geometry, readAheadBytes, fetchUnitBytes, prefetchUnitBytes, prefetchConcurrency });
    this.log = options.log ?? (() => {});
    this.pool = new RegionPool(options.workers);
    this.fetcher = new RegionFetcher(repo, this.pool, {
      signal: this.abort.signal,
      // Serving goes on, verified on this thread.
      onPoolFailure: (error) => this.log(`serve: the verifying threads failed (${error.message}); verifying on the main thread from now on`),
    });
    this.spare = new BufferPool(readAheadBytes + prefetchConcurrency * prefetchUnitBytes);
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
      for (const buffer of pinned.splice(0)) this.unpin(buffer);
    };
    try {
      await this.deliver(offset, length, (_at, bytes, index) => {
        views[index] = bytes;
        if (bytes.buffer !== this.zeros.buffer) {
          this.pins.set(bytes.buffer, (this.pins.get(bytes.buffer) ?? 0) + 1);
          pinned.push(bytes.buffer);
        }
      });
    } catch (error) {
      unpinAll();
      throw error;
    }
    return { views, release: unpinAll };
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
      if (this.cache.has(slot.id) || this.inFlight.has(slot.id)) this.counts.cacheHits++;
      else {
        this.counts.cacheMisses++;
        missing.push(slot);
      }
    }
    const state = { slot: (region: number) => this.slot(region), held: (id: string) => this.cache.has(id) || this.inFlight.has(id), prefetching: this.prefetching };
    for (const get of this.readAhead.plan(read, missing, state)) this.fetchUnit(get);

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
      const found = this.lookup(slot.id);
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

  private unpin(buffer: ArrayBufferLike): void {
    const left = (this.pins.get(buffer) ?? 1) - 1;
    if (left > 0) {
      this.pins.set(buffer, left);
      return;
    }
    this.pins.delete(buffer);
    // Evicted (or never cached) while a reply was using it: it can be reused now.
    if (!this.backing.has(buffer) && !this.closed) this.retire(buffer);
  }

  /** The counts as of now. */
  get stats(): PitExportStats {
    return { gets: this.fetcher.gets, bytesFetched: this.fetcher.bytesFetched, ...this.counts };
  }

  get fetching(): boolean {
    return this.inFlight.size > 0 || this.prefetching > 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.abort.abort(new AbortedError('the export is closed'));
    await Promise.allSettled([...this.inFlight.values()]);
    await this.pool.close();
    if (this.retiring !== undefined) clearImmediate(this.retiring);
    this.cache.clear();
    this.backing.clear();
    this.retired.clear();
    this.counts.cachedBytes = 0;
  }

  /** Makes the pages holding regions [first, last] at hand (without waiting when they are). */
  private loadPages(first: number, last: number): Promise<void> | undefined {
    const from = this.pit.pageOf(first);
    const to = this.pit.pageOf(last);
    const wanted: number[] = [];
    for (let page = from; page <= to; page++) {
      const held = this.pagesAtHand.get(page);
      if (held === undefined) wanted.push(page);
      else {
        this.pagesAtHand.delete(page);
        this.pagesAtHand.set(page, held);
      }
    }
    if (wanted.length === 0) return undefined;
    return Promise.all(wanted.map((page) => this.pit.page(page))).then((pages) => {
      for (const page of pages) {
        this.pagesAtHand.delete(page.page);
        this.pagesAtHand.set(page.page, page);
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
    const location = page.location(region);
    if (location === undefined) return undefined;
    return {
      id: `${location.pack}@${location.offset}`,
      region,
      pack: location.pack,
      offset: location.offset,
      length: regionLength(this.geometry, region),
      digest: page.digest(region).slice(),
    };
  }

  /** Cached bytes (now most recently used) or the fetch in flight. */
  private lookup(id: string): Uint8Array | Promise<Uint8Array> | undefined {
    const cached = this.cache.get(id);
    if (cached !== undefined) {
      this.cache.delete(id);
      this.cache.set(id, cached);
      return cached;
    }
    return this.inFlight.get(id);
  }

  /** Starts a planned GET; each of its slots is in flight until it is cached (or failed). */
  private fetchUnit(get: PlannedGet): void {
    const { range, slots, prefetch } = get;
    if (prefetch) this.prefetching++;
    const fetched = (async (): Promise<Array<Uint8Array | Error>> => {
      const { bytes, mismatches, missing } = await this.fetcher.fetch(range, { into: this.takeBuffer(range.length), reportDamage: true });
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
          this.remember(slot.id, bytes);
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

  private remember(id: string, bytes: Uint8Array): void {
    if (this.closed || bytes.buffer.byteLength > this.cacheBytes || this.cache.has(id)) return;
    this.cache.set(id, bytes);
    const views = this.backing.get(bytes.buffer) ?? 0;
    this.backing.set(bytes.buffer, views + 1);
    if (views === 0) this.counts.cachedBytes += bytes.buffer.byteLength;
    for (const [oldest, old] of this.cache) {
      if (this.counts.cachedBytes <= this.cacheBytes) break;
      this.cache.delete(oldest);
      const left = this.backing.get(old.buffer)! - 1;
      if (left > 0) this.backing.set(old.buffer, left);
      else {
        this.backing.delete(old.buffer);
        this.counts.cachedBytes -= old.buffer.byteLength;
        if (!this.pins.has(old.buffer)) this.retire(old.buffer);
      }
    }
  }

  /** A buffer for a GET of `length` bytes: a spare one of its size class, or a new one. */
  private takeBuffer(length: number): Uint8Array {
    const idle = this.spare.idleBytes;
    const buffer = this.spare.acquire(length);
    if (this.spare.idleBytes < idle) this.counts.fetchBuffersReused++;
    return buffer;
  }

  /**
   * A fetch buffer no cache entry uses: reused for a later GET, but only from the next macrotask
   * on, when every read resumed with a view of it has copied or pinned its bytes.
   */
  private retire(buffer: ArrayBufferLike): void {
    this.retired.add(buffer);
    this.retiring ??= setImmediate(() => {
      this.retiring = undefined;
      for (const retired of this.retired) {
        // Back in use since it was retired (a later region of its GET was cached, or a reply
        // pinned it): not spare after all.
        if (!this.backing.has(retired) && !this.pins.has(retired)) this.spare.adopt(retired as ArrayBuffer);
      }
      this.retired.clear();
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

/** A point in time as a read-only NBD export. */
export class PitExport implements NbdExport {
  readonly readOnly = true;
  readonly name: string;
  readonly description: string;
  readonly size: number;
  /** The point in time served. */
  readonly seq: number;
  /** Its time, ISO 8601 UTC. */
  readonly time: string;
  readonly kind: string;
  /** Newer points at or before the request passed over because they are suspect or damaged. */
  readonly skipped: Array<{ seq: number; kinds: string[] }>;
  /** Marks on the served point itself (only with allowSuspect). */
  readonly untrusted: string[];

  private constructor(
    private readonly reader: PitReader,
    name: string,
    info: { time: string; kind: string; skipped: PitExport['skipped']; untrusted: string[] },
  ) {
    this.name = name;
    this.size = reader.geometry.volumeSize;
    this.seq = reader.seq;
    this.time = info.time;
    this.kind = info.kind;
    this.skipped = info.skipped;
    this.untrusted = info.untrusted;
    this.description = `cdp-s3 point in time ${this.seq} (${this.time}), read-only`;
  }

  static async open(options: PitExportOptions): Promise<PitExport> {
    const { repo, view, chosen } = await loadPoint(options);
    const info = {
      time: new Date(chosen.summary.end).toISOString(),
      kind: chosen.summary.kind,
      skipped: chosen.skipped,
      untrusted: chosen.untrusted,
    };
    return new PitExport(new PitReader(repo, view, chosen.seq, options), options.name ?? '', info);
  }

  /** The same point in time under another export name, sharing this one's cache and fetches. */
  withName(name: string): PitExport {
    return new PitExport(this.reader, name, this);
  }

  get stats(): Readonly<PitExportStats> {
    return this.reader.stats;
  }

  /** Whether any GET (for a read or ahead of reads) is still running; tests wait on it instead of sleeping. */
  get fetching(): boolean {
    return this.reader.fetching;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = Buffer.allocUnsafe(length);
    await this.reader.readInto(offset, out);
    return out;
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.reader.readInto(offset, target);
  }

  readViews(offset: number, length: number): Promise<ReadViews> {
    return this.reader.readViews(offset, length);
  }

  write(_offset: number, _bytes: Uint8Array, _fua: boolean): Promise<void> {
    return Promise.reject(readOnly('write'));
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  trim(_offset: number, _length: number, _fua: boolean): Promise<void> {
    return Promise.reject(readOnly('trim'));
  }

  writeZeroes(_offset: number, _length: number, _fua: boolean): Promise<void> {
    return Promise.reject(readOnly('write zeroes'));
  }

  /** Stops the fetches and the verifying threads (for every name of this point in time). */
  close(): Promise<void> {
    return this.reader.close();
  }
}

function readOnly(what: string): NbdRequestError {
  return new NbdRequestError('EPERM', `${what}: a point in time is served read-only`);
}

export function openPitExport(options: PitExportOptions): Promise<PitExport> {
  return PitExport.open(options);
}

export interface ServeOptions extends Omit<PitExportOptions, 'name' | 'signal'> {
  /** Where to listen; port 0 picks a free one. */
  listen: { host: string; port: number };
  /** Export names, all serving the same point in time. Default [''] (the default export). */
  names?: string[];
  /** Bytes of request data the server queues before it stops reading from a client. */
  maxQueuedBytes?: number;
  /** Cancels opening; once serving, aborting it stops the server (in-flight reads finish first). */
  signal?: AbortSignal;
}

export interface ServeHandle {
  host: string;
  port: number;
  seq: number;
  time: string;
  kind: string;
  names: string[];
  skipped: PitExport['skipped'];
  untrusted: string[];
  /** The backend of every name (for its stats). */
  pit: PitExport;
  /** Settles once the server is closed (by the signal or close()). */
  closed: Promise<void>;
  /** Stops accepting, answers the requests in flight, closes the connections and the export. */
  close(): Promise<void>;
}

/** Serves a point in time read-only over NBD until the signal aborts or close() is called. */
export async function serve(options: ServeOptions): Promise<ServeHandle> {
  const names = [...new Set(options.names ?? [''])];
  if (names.length === 0) throw new CdpError('INVALID_ARGUMENT', 'serve needs at least one export name');
  const pit = await PitExport.open({ ...options, name: names[0] });
  let server: NbdServer;
  let address: { host: string; port: number };
  try {
    server = new NbdServer({
      exports: names.map((name) => (name === pit.name ? pit : pit.withName(name))),
      ...(options.maxQueuedBytes === undefined ? {} : { maxQueuedBytes: options.maxQueuedBytes }),
      ...(options.log === undefined ? {} : { log: options.log }),
    });
    address = await server.listen(options.listen.host, options.listen.port);
  } catch (error) {
    await pit.close();
    throw error;
  }
  let closing: Promise<void> | undefined;
  let settle = (): void => {};
  const closed = new Promise<void>((resolve) => (settle = resolve));
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      options.signal?.removeEventListener('abort', onAbort);
      try {
        await server.close({ drain: true });
      } finally {
        await pit.close();
        settle();
      }
    })());
  const onAbort = (): void => void close().catch((error: unknown) => options.log?.(`serve: closing failed: ${(error as Error).message}`));
  if (options.signal?.aborted === true) onAbort();
  else options.signal?.addEventListener('abort', onAbort, { once: true });
  return {
    host: address.host,
    port: address.port,
    seq: pit.seq,
    time: pit.time,
    kind: pit.kind,
    names,
    skipped: pit.skipped,
    untrusted: pit.untrusted,
    pit,
    closed,
    close,
  };
}
