// What backup, scan and protect share: reading regions of the primary through the RegionPool with
// a bounded read-ahead, and turning changed regions into the next delta (deduplicate, pack,
// upload with a bounded number of packs in flight, and build the delta's run of entries).

import { randomBytes } from 'node:crypto';
import { throwIfAborted } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import { DIGEST_BYTES, type Geometry, type RegionLocation, type StoredRegion, piecesOf, regionLength, storedId, wholeAt } from '../model/regions.js';
import { encodePatch, patchLength } from '../model/patches.js';
import type { PitPage } from '../model/pages.js';
import { packKey } from '../repo/keys.js';
import { PackBuilder } from '../repo/pack.js';
import type { PitView } from '../repo/pit-view.js';
import type { PendingDelta, Repository } from '../repo/repository.js';
import { RunBuilder } from '../repo/run-builder.js';
import type { DeltaInfo } from '../repo/run-codec.js';
import { type WriterTrust, mayReuse } from '../repo/trust.js';
import { TaskWindow } from '../util/task-window.js';
import type { ReadResult, RegionPool } from '../volume/region-pool.js';
import { NEVER_SAME } from '../volume/region-protocol.js';

/** A digest no region has: reading with it as the expectation always yields the bytes. */
export const NEVER_DIGEST: Uint8Array = NEVER_SAME;
const ZERO_DIGEST = new Uint8Array(DIGEST_BYTES);
/** Bytes a pack has beyond a region's for the frame around it (docs/FORMAT.md, "Pieces"). */
const PIECE_ROOM = 4096;

export interface ReadRegionsOptions {
  pool: RegionPool;
  fd: number;
  geometry: Geometry;
  /** In the order results are wanted; an async source may load what `expected` needs before yielding. */
  regions: Iterable<number> | AsyncIterable<number>;
  /** The digest each region is expected to have (null: all zeros); called right after the region is yielded. */
  expected: (region: number) => Uint8Array | null;
  /** Called once per region, one at a time, in the order of `regions`. */
  onResult: (region: number, result: ReadResult) => Promise<void> | void;
  /**
   * The regions that hold data (a sparse file's allocated extents); any other region is a hole,
   * zeros known without reading it. Undefined: every region is read.
   */
  dataRegions?: DeltaMap;
  onRead?: (region: number, length: number) => void;
  readAhead?: number;
  signal?: AbortSignal;
}

/**
 * Reads the regions through the pool with up to readAhead in flight. Results are handed to
 * onResult one at a time in the order of `regions`, whatever order the threads finish in, so a
 * backup packs regions in volume order and later reads of neighbouring regions merge into one
 * ranged GET; a 'changed' result's bytes are released to the pool after onResult returns.
 * Stops at the first failure or when the signal fires, after the reads in flight settle.
 */
export async function readRegions(options: ReadRegionsOptions): Promise<void> {
  const { pool, geometry: g, signal } = options;
  const readAhead = options.readAhead ?? pool.size * 4;
  const reads = new Set<Promise<void>>();
  let failure: unknown;
  let handling: Promise<void> = Promise.resolve();
  // A function, so the checks are made afresh after each await.
  const stopping = (): boolean => failure !== undefined || signal?.aborted === true;
  for await (const region of options.regions) {
    if (stopping()) break;
    const length = regionLength(g, region);
    const expected = options.expected(region);
    while (reads.size >= readAhead) await Promise.race(reads);
    if (stopping()) break;
    // A hole is zeros: nothing to read (but its result still goes in order with the others).
    const hole = options.dataRegions !== undefined && !options.dataRegions.has(region);
    const read: Promise<ReadResult> = hole
      ? Promise.resolve({ status: expected === null ? 'same' : 'zero' })
      : options.pool.read({ fd: options.fd, offset: region * g.regionSize, length, expected: expected === null ? null : expected.slice() });
    read.catch(() => {}); // awaited in turn below; until then a failure must not count as unhandled
    handling = handling.then(async () => {
      let result: ReadResult;
      try {
        result = await read;
      } catch (error) {
        failure ??= error;
        return;
      }
      try {
        if (failure === undefined) {
          await options.onResult(region, result);
          options.onRead?.(region, length);
        }
      } catch (error) {
        failure ??= error;
      } finally {
        if (result.status === 'changed') pool.release(result.bytes);
      }
    });
    const tracked = handling.finally(() => reads.delete(tracked));
    reads.add(tracked);
  }
  await Promise.all(reads);
  await handling;
  throwIfAborted(signal);
  if (failure !== undefined) throw failure;
}

/**
 * The regions of `wanted` (all of them if undefined) in ascending order, each yielded once the
 * view's page holding it is loaded, so `expected` can be answered from `page()`. With
 * `dataRegions` (a sparse file's allocated regions), a hole whose point-in-time content is zeros
 * too is left out: nothing to read, nothing changed.
 */
export async function* regionsWithPages(
  view: PitView,
  wanted: DeltaMap | undefined,
  onPage: (page: PitPage) => void,
  signal?: AbortSignal,
  dataRegions?: DeltaMap,
): AsyncGenerator<number> {
  if (wanted !== undefined && wanted.isEmpty()) return;
  for await (const page of view.pages(signal)) {
    const end = page.first + page.count;
    // Which regions of the page to visit, found per page rather than per region (a thin 16 TiB
    // volume has 16 Mi regions and a few hundred with data).
    let visit: Iterable<number>;
    if (dataRegions === undefined && wanted === undefined) visit = range(page.first, end);
    else {
      const keep = new Uint8Array(page.count);
      if (dataRegions === undefined) keep.fill(1);
      else {
        for (const region of dataRegions.regionsIn(page.first, end)) keep[region - page.first] = 1;
        if (!page.empty) for (let region = page.first; region < end; region++) if (!page.isZero(region)) keep[region - page.first] = 1;
      }
      if (wanted !== undefined) {
        const chosen = new Uint8Array(page.count);
        for (const region of wanted.regionsIn(page.first, end)) chosen[region - page.first] = 1;
        for (let i = 0; i < keep.length; i++) keep[i]! &= chosen[i]!;
      }
      visit = (function* () {
        for (let i = 0; i < keep.length; i++) if (keep[i] === 1) yield page.first + i;
      })();
    }
    let any = false;
    for (const region of visit) {
      if (!any) {
        onPage(page);
        any = true;
      }
      yield region;
    }
  }
}

function* range(first: number, end: number): Generator<number> {
  for (let region = first; region < end; region++) yield region;
}

/** Entries kept for deduplicating repeated content within one delta. */
const RECENT_CONTENT = 1 << 18;

function prefixOf(digest: Uint8Array): number {
  return Buffer.from(digest.buffer, digest.byteOffset, 6).readUIntLE(0, 6);
}

/**
 * Finds stored copies of a region's content with bounded memory: in the base point's page of
 * the region (unchanged or moved within the page range: every region of the page is indexed),
 * and among the regions this delta stored recently (repeated content). Zero regions never need
 * it. A full index of every stored region is what this avoids (an entry per region of the volume).
 * A copy may be a base with patches: the new entry names the same pieces.
 */
class DedupIndex {
  private readonly recent = new Map<number, { stored: StoredRegion; digest: Uint8Array }>();
  private pageIndex: { page: PitPage; byPrefix: Map<number, number> } | undefined;

  constructor(
    private readonly base: PitView | undefined,
    private readonly usable: (stored: StoredRegion) => boolean,
  ) {}

  find(region: number, digest: Uint8Array): StoredRegion | undefined {
    const prefix = prefixOf(digest);
    const recent = this.recent.get(prefix);
    if (recent !== undefined && Buffer.from(recent.digest).equals(digest) && this.usable(recent.stored)) return recent.stored;
    const page = this.base?.cachedPageOf(region);
    if (page === undefined) return undefined;
    if (this.pageIndex?.page !== page) {
      const byPrefix = new Map<number, number>();
      for (let r = page.first; r < page.first + page.count; r++) if (!page.isZero(r)) byPrefix.set(prefixOf(page.digest(r)), r);
      this.pageIndex = { page, byPrefix };
    }
    const match = this.pageIndex.byPrefix.get(prefix);
    if (match === undefined || !Buffer.from(page.digest(match)).equals(digest)) return undefined;
    const stored = page.stored(match);
    return stored !== undefined && this.usable(stored) ? stored : undefined;
  }

  stored(digest: Uint8Array, stored: StoredRegion): void {
    if (this.recent.size >= RECENT_CONTENT) this.recent.clear();
    this.recent.set(prefixOf(digest), { stored, digest: digest.slice() });
  }
}

export interface DeltaWriterOptions {
  signal?: AbortSignal;
  /** Packs being uploaded at once (each up to the repository's pack size in memory). */
  packsInFlight?: number;
  /** What the marks say about stored bytes (readWriterTrust): required, so no writer forgets it. */
  trust: WriterTrust;
  /** The patch chains this writer's earlier deltas made (a long-running writer's: protect's). */
  history?: PatchHistory;
}

/** Regions whose patch chains a PatchHistory remembers at most (about 100 bytes each). */
const HISTORY_REGIONS = 1 << 17;

/**
 * What a long-running writer knows of the patch chains it made: for each region, the blocks its
 * chain's patches changed since the base, valid for that chain only (named by storedId). When a
 * chain reaches the bound, the writer can then replace it by one patch of all those blocks on
 * the same base, instead of storing the whole region again: a database's hot pages, written
 * over and over in the same few blocks, then cost about what was written, not a region per
 * 17 writes. A chain made by another process (or before a restart) is not known: at the bound
 * its region is stored whole.
 */
export class PatchHistory {
  private readonly chains = new Map<number, { id: string; blocks: Uint8Array }>();

  /** The blocks the patches of `stored` (the region's entry) changed since its base, if known. */
  blocksOf(region: number, stored: StoredRegion | undefined): Uint8Array | undefined {
    const chain = this.chains.get(region);
    return chain !== undefined && stored !== undefined && chain.id === storedId(stored) ? chain.blocks : undefined;
  }

  remember(region: number, stored: StoredRegion, blocks: Uint8Array): void {
    if (this.chains.size >= HISTORY_REGIONS && !this.chains.has(region)) return;
    this.chains.set(region, { id: storedId(stored), blocks });
  }

  forget(region: number): void {
    this.chains.delete(region);
  }
}

export { locationId } from '../repo/trust.js';

/**
 * Builds delta `seq` on top of the point `base` shows: apply() each region read from the
 * primary, finish() to store the packs and pages, then delta().
 */
export class DeltaWriter {
  readonly changed: DeltaMap;
  bytesStored = 0;
  packCount = 0;
  /** Regions stored as a patch on their previous version (their bytes count in bytesStored). */
  regionsPatched = 0;
  private pack: PackBuilder | undefined;
  private readonly uploads: TaskWindow;
  private readonly spareBuffers: Buffer[] = []; // buffers of stored packs, filled again by later ones
  private readonly dedup: DedupIndex;
  private readonly ownPacks = new Set<string>();
  private readonly run: RunBuilder;
  private pages: PendingDelta['pages'] | undefined;

  constructor(
    private readonly repo: Repository,
    /** The newest point, which this delta follows. */
    readonly base: PitView,
    readonly seq: number,
    private readonly options: DeltaWriterOptions,
  ) {
    this.changed = new DeltaMap(repo.geometry.regionCount);
    // Content this delta stored itself is always there to reuse; older packs only as the marks allow.
    this.dedup = new DedupIndex(base, (stored) => this.usable(stored));
    this.run = new RunBuilder(repo.store, seq, repo.context, {
      blobs: repo.blobs,
      signal: options.signal,
      inlineEntries: repo.inlineEntries,
      onPageStored: (ref, page) => repo.rememberPage(ref, page),
    });
    this.uploads = new TaskWindow(options.packsInFlight ?? 4);
  }

  /**
   * Records what the primary holds in `region` now (callers serialize calls). `changedBlocks`,
   * when the caller knows it, is a block bitmap (model/patches.ts) that holds every block whose
   * content may differ from the region's version in the base point: the region may then be
   * stored as a patch of those blocks on that version. Without it, a changed region is stored
   * whole.
   */
  async apply(region: number, result: ReadResult, changedBlocks?: Uint8Array): Promise<void> {
    if (this.uploads.failed) await this.uploads.drain();
    if (result.status === 'same') return;
    this.changed.set(region);
    if (result.status === 'zero') {
      await this.run.set(region, undefined, ZERO_DIGEST);
      return;
    }
    let stored = this.dedup.find(region, result.digest);
    if (stored === undefined) {
      stored = (changedBlocks === undefined ? undefined : await this.patch(region, result.bytes, changedBlocks)) ?? wholeAt(await this.store(result.bytes));
      this.dedup.stored(result.digest, stored);
    }
    // A chain this delta did not just extend is not one the history knows.
    if (stored.patches.length === 0 || this.options.history?.blocksOf(region, stored) === undefined) this.options.history?.forget(region);
    await this.run.set(region, stored, result.digest);
  }

  /**
   * Stores the changed blocks of `region` as a patch on its version in the base point, if the
   * limits allow (repo.patchLimits) and every piece of that version may be reused. When the
   * chain is at the bound and the history knows every block its patches changed since the base,
   * one patch of all of them (and the new ones) replaces the chain, if that fits the limits.
   * Undefined otherwise: the region is stored whole.
   */
  private async patch(region: number, bytes: Uint8Array, changedBlocks: Uint8Array): Promise<StoredRegion | undefined> {
    if (changedBlocks.every((byte) => byte === 0)) return undefined; // nothing said to have changed: trust no patch
    const limits = this.repo.patchLimits;
    const previous = (await this.base.page(this.base.pageOf(region), this.options.signal)).stored(region);
    if (previous !== undefined && !this.usable(previous)) return undefined;
    const earlier = previous?.patches ?? [];
    const blockSize = this.repo.config.blockSize;
    const allowed = limits.maxPatchFraction * bytes.length;
    // Every block changed since the base, if known: nothing for a region stored whole (or zeros).
    const known = earlier.length === 0 ? new Uint8Array(changedBlocks.length) : this.options.history?.blocksOf(region, previous);
    const sinceBase = known === undefined ? undefined : Uint8Array.from(known, (byte, i) => byte | changedBlocks[i]!);
    const length = patchLength(changedBlocks, bytes.length, blockSize);
    const chainBytes = earlier.reduce((n, patch) => n + patch.length, length);
    let stored: StoredRegion;
    if (earlier.length < limits.maxPatches && chainBytes <= allowed) {
      const location = await this.store(encodePatch(bytes, changedBlocks, blockSize));
      stored = { base: previous?.base, patches: [...earlier, location] };
    } else if (sinceBase !== undefined && patchLength(sinceBase, bytes.length, blockSize) <= allowed) {
      const location = await this.store(encodePatch(bytes, sinceBase, blockSize));
      stored = { base: previous?.base, patches: [location] };
    } else return undefined;
    this.regionsPatched++;
    if (sinceBase !== undefined) this.options.history?.remember(region, stored, sinceBase);
    return stored;
  }

  /** Whether every stored piece of `stored` may be named by this delta. */
  private usable(stored: StoredRegion): boolean {
    return piecesOf(stored).every((piece) => this.ownPacks.has(piece.pack) || mayReuse(this.options.trust, piece));
  }

  /** No region below `region` will be applied again: its pages can be written out. */
  async closeBelow(region: number): Promise<void> {
    await this.run.closeBelow(region);
  }

  /** Uploads the last pack and the pages, and waits for every upload. */
  async finish(): Promise<void> {
    if (this.pack !== undefined && this.options.signal?.aborted !== true && !this.uploads.failed) await this.upload(this.pack);
    this.pack = undefined;
    await this.uploads.drain();
    this.pages = await this.run.finish();
  }

  /** Bytes of page packs this delta wrote (large deltas only). */
  get pageBytes(): number {
    return this.run.pageBytes;
  }

  /** The delta to commit (after finish()). */
  delta(info: Omit<DeltaInfo, 'storedBytes'>): PendingDelta {
    if (this.pages === undefined) throw new Error('DeltaWriter.delta() before finish()');
    return { seq: this.seq, info: { ...info, storedBytes: this.bytesStored }, pages: this.pages };
  }

  /** Puts `plain` (a region, or a patch) in the pack being filled, as a piece (compressed, sealed: repo.pieces). */
  private async store(plain: Uint8Array): Promise<RegionLocation> {
    const g = this.repo.geometry;
    const bytes = await this.repo.pieces.encode(plain, this.repo.compression);
    if (this.pack !== undefined && !this.pack.hasRoomFor(bytes.length)) {
      await this.upload(this.pack);
      this.pack = undefined;
    }
    if (this.pack === undefined) {
      // Room for the largest piece: a whole region that did not compress, in its frame.
      this.pack = new PackBuilder(packKey(this.seq, randomBytes(4).toString('hex')), Math.max(this.repo.config.packSize, g.regionSize + PIECE_ROOM), this.spareBuffers.pop());
      this.ownPacks.add(this.pack.key);
    }
    this.bytesStored += bytes.length;
    return { pack: this.pack.key, offset: this.pack.append(bytes), length: bytes.length };
  }

  private async upload(builder: PackBuilder): Promise<void> {
    this.packCount++;
    await this.uploads.add(async () => {
      await this.repo.putPack(builder.key, builder.bytes(), this.options.signal);
      this.spareBuffers.push(builder.backing);
    });
  }
}
