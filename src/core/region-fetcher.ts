// The one read path for stored regions, used by every restore target, by verify and by serve:
// plan merged ranged GETs from the regions wanted (in volume order) → fetch them into recycled
// buffers with a bounded number in flight → verify every region against its SHA-256 on the
// RegionPool's threads (which also write verified regions to their targets) → hand each range
// on, as it is ready or in the order planned. A region stored as a base with patches is
// composed first: consecutive such regions form one composed range, whose pieces are fetched
// in GETs merged per pack, applied in order, and the composed regions verified like any other. A caller with its own buffers (serve) fetches one
// range at a time into one of them; with onPoolFailure, verifying goes on on the main thread
// once the pool's threads are gone.

import { createHash } from 'node:crypto';
import { FormatError, IntegrityError, throwIfAborted } from '../errors.js';
import type { PitView } from '../repo/pit-view.js';
import type { Repository } from '../repo/repository.js';
import { TaskWindow } from '../util/task-window.js';
import { pwriteFully } from '../util/positional-io.js';
import type { RegionPool, VerifyResult, VerifySlice } from '../volume/region-pool.js';
import { type StoredRegion, identityHash, regionLength, storedId } from '../model/regions.js';
import { PATCH_DIGEST_BYTES, applyPatch } from '../model/patches.js';

/** Largest ranged GET: neighbouring regions of a pack are merged up to this size. */
export const MAX_RANGE_BYTES = 8 * 1024 * 1024;
export const DEFAULT_FETCHES_IN_FLIGHT = 8;

/** One stored region's bytes within a range: the regions of the volume that hold them (several when deduplicated). */
export interface FetchSlice {
  /** Offset of its bytes (as read, decoded) within the range's bytes. */
  at: number;
  /** Bytes of the region (a self-checked patch: at most this many until read, then its own length). */
  length: number;
  /** Where its stored frame is within the range's GET, and how long (docs/FORMAT.md, "Pieces"). */
  storedAt: number;
  storedLength: number;
  digest: Uint8Array;
  regions: number[];
  /** A patch read on its own (verify): its first 32 bytes are the SHA-256 of the rest; `digest` is unused. */
  selfChecked?: boolean;
}

/** Where one piece of a composed region is: in GET `get` of its range, `at` bytes in, `length` long. */
export interface PieceRef {
  get: number;
  at: number;
  length: number;
}

/** The pieces of a composed range: the GETs that fetch them, and per slice its base and patches. */
export interface Composition {
  /** Its GETs; a GET object shared with other ranges of its batch is fetched once for all of them. */
  gets: PieceGet[];
  /** Per slice: its base (undefined: zeros) and its patches, applied in order. */
  parts: Array<{ base: PieceRef | undefined; patches: PieceRef[] }>;
}

/**
 * One ranged GET of a pack; or, with `composed`, regions composed of pieces that its GETs
 * fetch, laid out back to back as the slices say (`pack` and `offset` then name its first GET).
 */
export interface FetchRange {
  pack: string;
  offset: number;
  /** Bytes of its regions, decoded (the slices lie back to back in them). */
  length: number;
  /** Bytes its GET reads (a composed range's GETs say their own). */
  stored: number;
  slices: FetchSlice[];
  composed?: Composition;
}

/** A stored region wanted, in volume order. */
export interface WantedRegion {
  region: number;
  /** Where its stored frame is (for a composed region: its last patch's), and how long. */
  pack: string;
  offset: number;
  stored: number;
  /** Bytes of the region (for a self-checked patch: the most it may hold). */
  length: number;
  digest: Uint8Array;
  /** The region is its base (undefined: zeros) with these patches applied in order. */
  compose?: StoredRegion;
  /** A patch to read on its own (verify): it carries its own SHA-256. */
  selfChecked?: boolean;
}

export interface PlanCounts {
  /** Regions of zeros (no request). */
  zeroRegions: number;
  dataRegions: number;
  /** Bytes the GETs download (a deduplicated region merged into a range is fetched once). */
  downloadBytes: number;
  requests: number;
  /** Distinct packs the GETs read. */
  packs: number;
}

export function emptyCounts(): PlanCounts {
  return { zeroRegions: 0, dataRegions: 0, downloadBytes: 0, requests: 0, packs: 0 };
}

/**
 * The view's regions that `wanted` picks (all if undefined), in volume order, as stored regions
 * to fetch; zero regions are only counted.
 */
export async function* storedRegions(view: PitView, counts: PlanCounts, wanted?: (region: number) => boolean, signal?: AbortSignal): AsyncGenerator<WantedRegion> {
  for await (const page of view.pages(signal)) {
    if (page.empty && wanted === undefined) {
      counts.zeroRegions += page.count; // a hole of a thin volume: nothing stored
      continue;
    }
    for (let region = page.first; region < page.first + page.count; region++) {
      if (wanted !== undefined && !wanted(region)) continue;
      const stored = page.stored(region);
      if (stored === undefined) {
        counts.zeroRegions++;
        continue;
      }
      counts.dataRegions++;
      yield wantedRegion(region, stored, regionLength(view.geometry, region), page.digest(region));
    }
  }
}

/** What fetching `region`, stored as `stored`, means: its bytes, or its pieces to compose. */
export function wantedRegion(region: number, stored: StoredRegion, length: number, digest: Uint8Array): WantedRegion {
  const last = stored.patches.at(-1) ?? stored.base!;
  const wanted: WantedRegion = { region, pack: last.pack, offset: last.offset, stored: last.length, length, digest: digest.slice() };
  if (stored.patches.length > 0) wanted.compose = stored;
  return wanted;
}

/** A GET of a composed range: shared by the ranges of one batch that need its pieces (their patches). */
export interface PieceGet {
  pack: string;
  offset: number;
  length: number;
}

interface PlannedPiece {
  pack: string;
  offset: number;
  length: number;
  /** Where the piece lands: its GET (filled in when the GETs are planned) and where in it. */
  get: PieceGet | undefined;
  at: number;
}

/** Merges pieces into GETs: one per run of pieces back to back (or shared) in a pack, of up to `max` bytes. */
function planGets(pieces: PlannedPiece[], max: number): PieceGet[] {
  const gets: PieceGet[] = [];
  for (const p of [...pieces].sort((a, b) => (a.pack < b.pack ? -1 : a.pack > b.pack ? 1 : a.offset - b.offset))) {
    const get = gets.at(-1);
    const end = p.offset + p.length;
    if (get !== undefined && get.pack === p.pack && p.offset <= get.offset + get.length && end - get.offset <= max) {
      get.length = Math.max(get.length, end - get.offset);
    } else gets.push({ pack: p.pack, offset: p.offset, length: p.length });
    p.get = gets.at(-1)!;
    p.at = p.offset - p.get.offset;
  }
  return gets;
}

/** Composed regions batched: up to this many ranges' worth share the GETs of their patches. */
export const COMPOSED_BATCH_RANGES = 8;

/**
 * The ranges that compose `wanted` (composed regions, in volume order): ranges of up to
 * maxRangeBytes of regions, one slice per composition (regions with the same one share it,
 * unless `oneRegionPerSlice`). Each range fetches its bases in GETs of its own; the patches of
 * the whole batch are fetched in GETs the ranges share, one per run of patches back to back in a
 * pack: patches are small, and those of neighbouring regions written by one delta lie back to
 * back in its pack, so a batch of ranges reads them in a few requests rather than a few per range.
 */
export function composedRanges(wanted: readonly WantedRegion[], options: { maxRangeBytes?: number; oneRegionPerSlice?: boolean } = {}): FetchRange[] {
  const max = options.maxRangeBytes ?? MAX_RANGE_BYTES;
  const groups: Array<{ slices: FetchSlice[]; parts: Array<{ base: PlannedPiece | undefined; patches: PlannedPiece[] }>; bases: PlannedPiece[]; length: number }> = [];
  const patches: PlannedPiece[] = [];
  const sliceOf = new Map<string, FetchSlice>();
  const piece = (pack: string, offset: number, length: number): PlannedPiece => ({ pack, offset, length, get: undefined, at: 0 });
  for (const w of wanted) {
    const compose = w.compose!;
    const id = storedId(compose);
    const same = options.oneRegionPerSlice === true ? undefined : sliceOf.get(id);
    if (same !== undefined && same.length === w.length) {
      same.regions.push(w.region);
      continue;
    }
    let group = groups.at(-1);
    if (group === undefined || (group.length > 0 && group.length + w.length > max)) {
      groups.push((group = { slices: [], parts: [], bases: [], length: 0 }));
      sliceOf.clear(); // a slice is shared within its range only
    }
    const slice: FetchSlice = { at: group.length, length: w.length, storedAt: 0, storedLength: 0, digest: w.digest, regions: [w.region] };
    group.slices.push(slice);
    sliceOf.set(id, slice);
    group.length += w.length;
    const base = compose.base === undefined ? undefined : piece(compose.base.pack, compose.base.offset, compose.base.length);
    if (base !== undefined) group.bases.push(base);
    const own = compose.patches.map((p) => piece(p.pack, p.offset, p.length));
    patches.push(...own);
    group.parts.push({ base, patches: own });
  }
  planGets(patches, max);
  return groups.map((group) => {
    const gets = planGets(group.bases, max);
    // The shared patch GETs this range needs, after its own base GETs.
    for (const part of group.parts) for (const p of part.patches) if (!gets.includes(p.get!)) gets.push(p.get!);
    const ref = (p: PlannedPiece): PieceRef => ({ get: gets.indexOf(p.get!), at: p.at, length: p.length });
    const parts = group.parts.map((part) => ({ base: part.base === undefined ? undefined : ref(part.base), patches: part.patches.map(ref) }));
    return { pack: gets[0]!.pack, offset: gets[0]!.offset, length: group.length, stored: 0, slices: group.slices, composed: { gets, parts } };
  });
}

/** The one range that composes `wanted` (at most a range's worth of composed regions). */
export function composedRange(wanted: readonly WantedRegion[], options: { oneRegionPerSlice?: boolean } = {}): FetchRange {
  return composedRanges(wanted, { ...options, maxRangeBytes: Number.MAX_SAFE_INTEGER })[0]!;
}

/**
 * Merges consecutive wanted regions that lie back to back in one pack into ranges of up to
 * maxRangeBytes (backups pack regions in volume order, so neighbours usually do). A region
 * whose stored bytes are already in the range being built (deduplicated content) joins that
 * slice instead of being fetched again, unless `oneRegionPerSlice` (a stream in volume order).
 * Consecutive composed regions go into composed ranges of up to maxRangeBytes of regions.
 */
export async function* planRanges(
  regions: AsyncIterable<WantedRegion>,
  counts: PlanCounts,
  options: { maxRangeBytes?: number; oneRegionPerSlice?: boolean } = {},
): AsyncGenerator<FetchRange> {
  const max = options.maxRangeBytes ?? MAX_RANGE_BYTES;
  const packs = new Set<string>();
  let current: FetchRange | undefined;
  let inCurrent = new Map<number, FetchSlice>(); // offset → slice, for the range being built
  let batch: WantedRegion[] = []; // composed regions gathered for a batch of composed ranges
  let batchBytes = 0;
  const composed = (): FetchRange[] => {
    const ranges = composedRanges(batch, options);
    batch = [];
    batchBytes = 0;
    const counted = new Set<PieceGet>();
    for (const range of ranges) {
      for (const get of range.composed!.gets) {
        if (counted.has(get)) continue;
        counted.add(get);
        counts.requests++;
        counts.downloadBytes += get.length;
        packs.add(get.pack);
      }
    }
    counts.packs = packs.size;
    return ranges;
  };
  for await (const wanted of regions) {
    if (wanted.compose !== undefined) {
      if (current !== undefined) yield current;
      current = undefined;
      if (batch.length > 0 && batchBytes + wanted.length > COMPOSED_BATCH_RANGES * max) yield* composed();
      batch.push(wanted);
      batchBytes += wanted.length;
      continue;
    }
    if (batch.length > 0) yield* composed();
    const same = options.oneRegionPerSlice === true || current?.pack !== wanted.pack ? undefined : inCurrent.get(wanted.offset);
    if (same !== undefined && same.length === wanted.length && same.storedLength === wanted.stored) {
      same.regions.push(wanted.region);
      continue;
    }
    const joins =
      current !== undefined &&
      current.pack === wanted.pack &&
      current.offset + current.stored === wanted.offset &&
      current.length + wanted.length <= max &&
      current.stored + wanted.stored <= max;
    if (!joins) {
      if (current !== undefined) yield current;
      current = { pack: wanted.pack, offset: wanted.offset, length: 0, stored: 0, slices: [] };
      inCurrent = new Map();
      counts.requests++;
      packs.add(wanted.pack);
      counts.packs = packs.size;
    }
    const slice: FetchSlice = {
      at: current!.length,
      length: wanted.length,
      storedAt: current!.stored,
      storedLength: wanted.stored,
      digest: wanted.digest,
      regions: [wanted.region],
      ...(wanted.selfChecked === true ? { selfChecked: true } : {}),
    };
    current!.slices.push(slice);
    inCurrent.set(wanted.offset, slice);
    current!.length += wanted.length;
    current!.stored += wanted.stored;
    counts.downloadBytes += wanted.stored;
  }
  if (current !== undefined) yield current;
  if (batch.length > 0) yield* composed();
}

export interface FetchedRange {
  range: FetchRange;
  /** The verified bytes (with keepBytes, valid until the handler returns; with into, the caller's). */
  bytes: Uint8Array | undefined;
  /** Slices whose bytes do not match their digest (nothing of them was written). */
  mismatches: Array<{ slice: number; digest: Uint8Array }>;
  /** The pack is missing or too short for the range (verify reports it; others throw it). */
  missing: FormatError | undefined;
}

/** How one range is fetched. */
export interface FetchOptions {
  /** Where the worker writes each verified slice: [fd, position] pairs. */
  writes?: (slice: FetchSlice) => Array<[number, number]>;
  /** Bring the verified bytes back to the main thread. */
  keepBytes?: boolean;
  /** A missing pack or bad bytes are reported in the result instead of thrown. */
  reportDamage?: boolean;
  /**
   * The buffer to read into (at least the range's length). It stays the caller's: the fetcher
   * never recycles it, and the verified bytes come back as with keepBytes — the same memory, but
   * after a trip to a thread under a new ArrayBuffer object. Without it, a recycled one.
   */
  into?: Uint8Array;
}

export interface FetchHandlers extends Omit<FetchOptions, 'into'> {
  onRange?: (fetched: FetchedRange) => Promise<void> | void;
}

export interface RegionFetcherOptions {
  fetchesInFlight?: number;
  signal?: AbortSignal;
  /**
   * Given, a fetcher whose pool's threads have failed (they are gone for good then) verifies and
   * writes on the main thread from then on, and calls this once with why; the range whose bytes
   * were with a dying thread still fails. Without it, every fetch fails with the pool's error.
   */
  onPoolFailure?: (error: Error) => void;
}

/** The error for a slice whose bytes do not match its digest. */
export function integrityError(range: FetchRange, mismatch: { slice: number; digest: Uint8Array }): IntegrityError {
  const slice = range.slices[mismatch.slice]!;
  const part = range.composed?.parts[mismatch.slice];
  return new IntegrityError(
    part === undefined
      ? `region ${slice.regions[0]} in ${range.pack} at ${range.offset + slice.storedAt}`
      : `region ${slice.regions[0]} composed of ${part.base === undefined ? 'zeros' : 'its base'} and ${part.patches.length} patches`,
    Buffer.from(slice.digest).toString('hex'),
    Buffer.from(mismatch.digest).toString('hex'),
  );
}

export class RegionFetcher {
  /** GETs made and bytes downloaded. */
  gets = 0;
  bytesFetched = 0;
  private readonly spare: Uint8Array[] = [];
  private poolFailureTold = false;
  /** GETs of composed ranges in flight or done, by the plan's GET object (kept only while a range holds it). */
  private readonly sharedGets = new WeakMap<PieceGet, Promise<Uint8Array>>();

  constructor(
    private readonly repo: Repository,
    private readonly pool: RegionPool,
    private readonly options: RegionFetcherOptions = {},
  ) {}

  /** Fetches and verifies every range, handing each on as it is ready. */
  async run(ranges: AsyncIterable<FetchRange>, handlers: FetchHandlers): Promise<void> {
    const window = new TaskWindow(this.options.fetchesInFlight ?? DEFAULT_FETCHES_IN_FLIGHT);
    try {
      for await (const range of ranges) {
        throwIfAborted(this.options.signal);
        await window.add(async () => {
          const fetched = await this.fetch(range, handlers);
          try {
            await handlers.onRange?.(fetched);
          } finally {
            this.giveBack(fetched.bytes);
          }
        });
      }
      await window.drain();
    } finally {
      await window.settle();
    }
    throwIfAborted(this.options.signal);
  }

  /**
   * The ranges fetched and verified, in the order planned (with the next ones in flight), their
   * bytes kept; each range's bytes are reused once the caller asks for the next.
   */
  async *ordered(ranges: AsyncIterable<FetchRange>): AsyncGenerator<FetchedRange> {
    const limit = this.options.fetchesInFlight ?? DEFAULT_FETCHES_IN_FLIGHT;
    const ahead: Array<Promise<FetchedRange>> = [];
    const iterator = ranges[Symbol.asyncIterator]();
    let done = false;
    try {
      for (;;) {
        while (!done && ahead.length < limit) {
          const next = await iterator.next();
          if (next.done === true) done = true;
          else {
            const fetched = this.fetch(next.value, { keepBytes: true });
            fetched.catch(() => {}); // awaited in turn; an earlier failure must not leave it unhandled
            ahead.push(fetched);
          }
        }
        const first = ahead.shift();
        if (first === undefined) return;
        const fetched = await first;
        try {
          yield fetched;
        } finally {
          this.giveBack(fetched.bytes);
        }
      }
    } finally {
      // No fetch may reach the pool after the caller has closed it.
      for (const fetched of await Promise.allSettled(ahead)) if (fetched.status === 'fulfilled') this.giveBack(fetched.value.bytes);
      await iterator.return?.();
    }
  }

  /**
   * One ranged GET (or a composed range's GETs, then the composing), verified slice by slice on
   * a worker (and written there, with `writes`).
   */
  async fetch(range: FetchRange, options: FetchOptions): Promise<FetchedRange> {
    const theirs = options.into;
    let buffer = theirs ?? this.spare.pop();
    if (buffer === undefined || buffer.length < range.length) buffer = new Uint8Array(Math.max(MAX_RANGE_BYTES, range.length));
    let bytes: Uint8Array;
    try {
      bytes = range.composed === undefined ? await this.get(range, buffer) : await this.compose(range, range.composed, buffer);
    } catch (error) {
      if (theirs === undefined) this.giveBack(buffer);
      if (error instanceof FormatError && options.reportDamage === true) return { range, bytes: undefined, mismatches: [], missing: error };
      throw error;
    }
    // A store that read into the buffer hands it over whole (no copy on the way to the thread).
    const owned = bytes.buffer === buffer.buffer;
    if (!owned && theirs === undefined) this.giveBack(buffer);
    const recyclable = owned && theirs === undefined;
    const { bytes: back, mismatches } = await this.verify(
      bytes,
      range.slices.map((slice) => ({
        at: slice.at,
        length: slice.length,
        expected: slice.digest,
        writes: options.writes?.(slice) ?? [],
        ...(slice.selfChecked === true ? { selfChecked: true } : {}),
      })),
      owned,
    );
    const kept = options.keepBytes === true || theirs !== undefined ? back : undefined;
    if (kept === undefined && recyclable) this.giveBack(back);
    if (mismatches.length > 0 && options.reportDamage !== true) {
      if (kept !== undefined && recyclable) this.giveBack(kept);
      throw integrityError(range, mismatches[0]!);
    }
    return { range, bytes: kept, mismatches, missing: undefined };
  }

  /**
   * The range's one GET, its pieces decoded into `buffer` at their slices. A piece that does not
   * decode (tampered, truncated, another repository's) leaves zeros: its digest check fails
   * then, like any damage. A self-checked patch takes its own length.
   */
  private async get(range: FetchRange, buffer: Uint8Array): Promise<Uint8Array> {
    const scratch = this.spare.pop();
    const into = scratch !== undefined && scratch.length >= range.stored ? scratch : undefined;
    let stored: Uint8Array;
    try {
      stored = await this.repo.readPackRange(range.pack, range.offset, range.stored, this.options.signal, into);
      this.gets++;
      this.bytesFetched += stored.length;
      const pieces = await Promise.all(range.slices.map((slice) => this.decode(stored.subarray(slice.storedAt, slice.storedAt + slice.storedLength), slice.length, range.pack, range.offset + slice.storedAt)));
      range.slices.forEach((slice, i) => {
        const piece = pieces[i];
        const target = buffer.subarray(slice.at, slice.at + slice.length);
        if (piece !== undefined && (piece.length === slice.length || (slice.selfChecked === true && piece.length <= slice.length))) {
          target.set(piece);
          if (slice.selfChecked === true) slice.length = piece.length;
        } else target.fill(0);
      });
    } finally {
      if (scratch !== undefined) this.giveBack(scratch);
    }
    return buffer.subarray(0, range.length);
  }

  /** A stored piece's bytes, or undefined when it does not decode (damage: the digest check reports it). */
  private async decode(stored: Uint8Array, limit: number, pack: string, offset: number): Promise<Uint8Array | undefined> {
    try {
      return await this.repo.pieces.decode(stored, `piece in ${pack} at ${offset}`, limit);
    } catch (error) {
      if (error instanceof FormatError) return undefined;
      throw error;
    }
  }

  /**
   * Fetches a composed range's pieces (its GETs at once) and composes each slice into `buffer`:
   * its base (or zeros), then its patches in order. A patch that does not fit its region leaves
   * the slice as it is: its digest check fails then, like any damage.
   */
  private async compose(range: FetchRange, composition: Composition, buffer: Uint8Array): Promise<Uint8Array> {
    const gets = await Promise.all(composition.gets.map((get) => this.getPieces(get)));
    const blockSize = this.repo.config.blockSize;
    const of = (ref: PieceRef, limit: number): Promise<Uint8Array | undefined> => {
      const get = composition.gets[ref.get]!;
      return this.decode(gets[ref.get]!.subarray(ref.at, ref.at + ref.length), limit, get.pack, get.offset + ref.at);
    };
    await Promise.all(
      range.slices.map(async (slice, i) => {
        const part = composition.parts[i]!;
        const region = buffer.subarray(slice.at, slice.at + slice.length);
        const [base, ...patches] = await Promise.all([part.base === undefined ? undefined : of(part.base, slice.length), ...part.patches.map((patch) => of(patch, 2 * slice.length))]);
        if (base === undefined || base.length !== slice.length) region.fill(0);
        else region.set(base);
        try {
          for (const patch of patches) {
            if (patch === undefined) throw new Error('a patch does not decode');
            applyPatch(region, patch, blockSize);
          }
        } catch {
          region.fill(0); // Damaged: the digest check says so.
        }
      }),
    );
    return buffer.subarray(0, range.length);
  }

  /** A composed range's GET, fetched once however many ranges of its batch share it. */
  private getPieces(get: PieceGet): Promise<Uint8Array> {
    let fetched = this.sharedGets.get(get);
    if (fetched === undefined) {
      fetched = this.repo.readPackRange(get.pack, get.offset, get.length, this.options.signal).then((bytes) => {
        this.gets++;
        this.bytesFetched += bytes.length;
        return bytes;
      });
      fetched.catch(() => {}); // each range that needs it awaits it
      this.sharedGets.set(get, fetched);
    }
    return fetched;
  }

  /** On the pool's threads; once they have failed, here (with onPoolFailure). */
  private async verify(bytes: Uint8Array, slices: VerifySlice[], owned: boolean): Promise<VerifyResult> {
    const onPoolFailure = this.options.onPoolFailure;
    if (onPoolFailure === undefined) return this.pool.verify(bytes, slices, owned);
    if (this.pool.failure === undefined) {
      try {
        return await this.pool.verify(bytes, slices, owned);
      } catch (error) {
        // A failed write (RegionIoError) leaves the threads alive: only a dead pool falls back.
        if (this.pool.failure === undefined || this.options.signal?.aborted === true) throw error;
        this.tellPoolFailure(onPoolFailure);
        // Bytes that went to a thread that died are gone (detached): this range fails, later ones are fetched anew.
        if (bytes.byteLength === 0) throw error;
      }
    }
    this.tellPoolFailure(onPoolFailure);
    return verifyHere(bytes, slices, this.repo.identity);
  }

  private tellPoolFailure(onPoolFailure: (error: Error) => void): void {
    if (this.poolFailureTold) return;
    this.poolFailureTold = true;
    onPoolFailure(this.pool.failure!);
  }

  /** Keeps a range buffer for a later GET (a page fault per byte of a fresh one is what this saves). */
  private giveBack(bytes: Uint8Array | undefined): void {
    if (bytes === undefined || bytes.buffer.byteLength < MAX_RANGE_BYTES || bytes.buffer instanceof SharedArrayBuffer) return;
    if (this.spare.length < (this.options.fetchesInFlight ?? DEFAULT_FETCHES_IN_FLIGHT) + 2) this.spare.push(new Uint8Array(bytes.buffer));
  }
}

/** What a worker does for a verify-write job, on this thread. */
async function verifyHere(bytes: Uint8Array, slices: VerifySlice[], identity: Uint8Array | undefined): Promise<VerifyResult> {
  const mismatches: VerifyResult['mismatches'] = [];
  for (const [index, slice] of slices.entries()) {
    const part = bytes.subarray(slice.at, slice.at + slice.length);
    const expected = slice.selfChecked === true ? part.subarray(0, PATCH_DIGEST_BYTES) : slice.expected;
    const digest = (slice.selfChecked === true ? createHash('sha256') : identityHash(identity)).update(slice.selfChecked === true ? part.subarray(PATCH_DIGEST_BYTES) : part).digest();
    if (!digest.equals(expected)) {
      mismatches.push({ slice: index, digest });
      continue;
    }
    for (const [fd, position] of slice.writes) await pwriteFully(fd, part, position);
  }
  return { bytes, mismatches };
}
