// A repository: one volume's config, delta chain, spans, page packs and packs in an object store.
// This layer knows the keys and codecs and the commit order; use cases live in src/core.

import { endianness } from 'node:os';
import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { CdpError, FormatError, StoreError, throwIfAborted } from '../errors.js';
import { type Geometry } from '../model/regions.js';
import { type RunPage, mergeRunPages, pageCount } from '../model/pages.js';
import type { GetOptions, ObjectStore } from '../store/types.js';
import { type Block, ChainGapError, ChainIndex, blockKey, describeBlock } from './chain-index.js';
import { type RepoConfig, configEncryption, configGeometry, decodeConfig, encodeConfig } from './config.js';
import { BlobCodec } from './page-packs.js';
import { type Compression, PieceCodec } from './pieces.js';
import { storeKeys } from './sealed-store.js';
import { storeObjectLock } from './retaining-store.js';
import { NO_PASSWORD_HINT } from './unlock.js';
import { CONFIG_KEY, seqName } from './keys.js';
import { PagePackWriter } from './page-packs.js';
import { PitView } from './pit-view.js';
import { INLINE_ENTRIES } from './run-builder.js';
import {
  type BlobRef,
  type DeltaInfo,
  INLINE_SUMMARIES,
  type PageRef,
  type PointSummary,
  type RootContext,
  type RunRoot,
  SUMMARIES_PER_BLOB,
  decodeDeltaRoot,
  decodePage,
  decodeSpanRoot,
  decodeSummaryBlob,
  encodeDeltaRoot,
  removedSummary,
  encodePage,
  encodeSpanRoot,
  encodeSummaryBlob,
} from './run-codec.js';
import { RunReader, type RunSource } from './run-reader.js';

if (endianness() !== 'LE') throw new Error('cdp-s3 stores little-endian arrays and runs on little-endian hosts only');

/** Roots and pages of runs kept in memory for re-reading (bytes). */
const ROOT_CACHE_BYTES = 32 * 1024 * 1024;
const PAGE_CACHE_BYTES = 32 * 1024 * 1024;
/** Pages of a span's children read ahead while merging. */
const MERGE_READ_AHEAD = 8;

/**
 * A writer stores a region whose changed blocks it knows as a patch on the region's stored
 * version while the region then has at most `maxPatches` patches and they add up to at most
 * `maxPatchFraction` of the region's bytes; otherwise whole. So a restore needs at most
 * maxPatches + 1 pieces of a region, and fetches at most 1 + maxPatchFraction of its bytes.
 */
export interface PatchLimits {
  maxPatches: number;
  maxPatchFraction: number;
}

export const DEFAULT_PATCH_LIMITS: PatchLimits = { maxPatches: 16, maxPatchFraction: 0.25 };

/** A delta a writer has built (its packs and page packs stored), ready to commit. */
export interface PendingDelta {
  seq: number;
  info: DeltaInfo;
  pages: PageRef[];
}

export interface CommitResult {
  /** The committed delta, as a run (its root is in memory). */
  run: RunReader;
  /** Spans written after it. */
  spans: Block[];
  /** Why a span due at this point was not written (the point in time is committed). */
  spanError?: string;
  /** Bytes of metadata this commit stored: the delta's root, and the spans' roots and page packs. */
  metadataBytes: number;
}

export class Repository implements RunSource {
  readonly store: ObjectStore;
  readonly config: RepoConfig;
  readonly geometry: Geometry;
  readonly context: RootContext;
  /** Runs with at most this many entries are stored inline in their root (a writer's choice; readers take both). */
  inlineEntries = INLINE_ENTRIES;
  /** When writers store a changed region as a patch, and when whole (a writer's choice; readers take any chain). */
  patchLimits: PatchLimits = DEFAULT_PATCH_LIMITS;
  private readonly roots = new LRUCache<string, RunReader>({ maxSize: ROOT_CACHE_BYTES, sizeCalculation: (run) => Math.max(1, run.rootBytes * 2) });
  private readonly summaryCache = new LRUCache<string, PointSummary[]>({ maxSize: 1 << 20, sizeCalculation: (list) => Math.max(1, list.length) });
  private readonly pages = new LRUCache<string, RunPage>({ maxSize: PAGE_CACHE_BYTES, sizeCalculation: (page) => Math.max(1, page.regions.length * 48) });

  /** How pieces are stored (compressed, sealed) and read back. */
  readonly pieces: PieceCodec;
  /** How page-pack blobs are sealed and opened (identity in a plain repository). */
  readonly blobs: BlobCodec;
  /** The identity key of region digests (encrypted repositories); undefined: plain SHA-256. */
  readonly identity: Uint8Array | undefined;
  /** How this process's writers compress pieces: the config's choice unless a command says otherwise. */
  compression: Compression;

  private constructor(store: ObjectStore, config: RepoConfig) {
    this.store = store;
    this.config = config;
    const keys = storeKeys(store);
    this.pieces = new PieceCodec(config.volumeId, keys?.sealer);
    this.identity = keys?.identity;
    this.blobs = new BlobCodec(config.volumeId, keys?.sealer);
    this.compression = config.compression;
    this.geometry = configGeometry(config);
    this.context = {
      volumeId: config.volumeId,
      pageRegions: config.pageRegions,
      regionCount: this.geometry.regionCount,
      pageTotal: pageCount(this.geometry, config.pageRegions),
    };
  }

  /** Writes a new config; refuses if the repository already has one. */
  static async init(store: ObjectStore, config: RepoConfig, signal?: AbortSignal): Promise<Repository> {
    if ((config.encryption !== 'none') !== (storeKeys(store) !== undefined)) throw new Error('an encrypted repository is created through the store its keys unlock (createKeys), a plain one without');
    if ((config.objectLock !== undefined) !== (storeObjectLock(store) !== undefined)) throw new Error('an Object Lock repository is created through a RetainingStore, a repository without one without');
    const existing = await store.head(CONFIG_KEY, signal === undefined ? {} : { signal });
    if (existing !== undefined) throw alreadyInitialized(store);
    try {
      await store.put(CONFIG_KEY, encodeConfig(config, storeKeys(store)), signal === undefined ? { ifAbsent: true } : { ifAbsent: true, signal });
    } catch (error) {
      if (error instanceof StoreError && error.kind === 'exists') throw alreadyInitialized(store);
      throw error;
    }
    return new Repository(store, config);
  }

  static async open(store: ObjectStore, signal?: AbortSignal): Promise<Repository> {
    let bytes: Uint8Array;
    try {
      bytes = await store.get(CONFIG_KEY, signal === undefined ? {} : { signal });
    } catch (error) {
      if (error instanceof StoreError && error.kind === 'not-found') {
        throw new CdpError('REPO_NOT_INITIALIZED', `no repository at ${store.location}: run \`cdp-s3 init --repo ${store.location} --from SOURCE\` first`, {
          cause: error,
        });
      }
      throw error;
    }
    const keys = storeKeys(store);
    if (keys === undefined && configEncryption(bytes) !== 'none') {
      throw new CdpError('PASSWORD', `${store.location} is encrypted and was opened without its password: ${NO_PASSWORD_HINT}`);
    }
    const config = decodeConfig(bytes, keys);
    // Every put must carry the retention: only unlock.ts knows to stack the RetainingStore.
    if (config.objectLock !== undefined && storeObjectLock(store) === undefined) {
      throw new Error(`${store.location} has Object Lock: open its store through unlockStore (repo/unlock.ts), which retains what is put`);
    }
    return new Repository(store, config);
  }

  get pageRegions(): number {
    return this.config.pageRegions;
  }

  get fanout(): number {
    return this.config.spanFanout;
  }

  /** The chain's end, found in O(levels) listings (ranges further back are listed when asked for). */
  index(signal?: AbortSignal): Promise<ChainIndex> {
    return ChainIndex.load(this.store, this.fanout, this.config.volumeId, signal);
  }

  /** Everything listed: every missing delta is known (log, verify, status). */
  fullIndex(signal?: AbortSignal): Promise<ChainIndex> {
    return ChainIndex.full(this.store, this.fanout, this.config.volumeId, signal);
  }

  /** A delta or span, its root read (and cached); its pages are read when asked for. */
  async readRun(block: Block, signal?: AbortSignal): Promise<RunReader> {
    const key = blockKey(block);
    const cached = this.roots.get(key);
    if (cached !== undefined) return cached;
    const bytes = await this.getObject(key, describeBlock(block), signal);
    const root =
      block.level === 0
        ? decodeDeltaRoot(bytes, block.last, this.context)
        : decodeSpanRoot(bytes, block, this.context);
    const run = new RunReader(block, root, this, bytes.length);
    this.roots.set(key, run);
    return run;
  }

  async readPage(ref: PageRef, what: string, signal?: AbortSignal): Promise<RunPage> {
    const blob = ref.ref!;
    const id = `${blob.pack}@${blob.offset}`;
    const cached = this.pages.get(id);
    if (cached !== undefined) return cached;
    const bytes = await this.readBlob(blob, `${what} page ${ref.page}`, signal);
    const page = decodePage(bytes, ref.page, this.context, what);
    if (page.regions.length !== ref.count) throw new FormatError('FORMAT_CORRUPT', `${what} page ${ref.page}`, `holds ${page.regions.length} entries; its root says ${ref.count}`);
    this.pages.set(id, page);
    return page;
  }

  /**
   * Keeps a page this process just stored, so the spans that merge its run (written by the same
   * writer, soon) need not read it back (a second-level span merges 16 runs of up to a page a
   * page of the volume each).
   */
  rememberPage(ref: PageRef, page: RunPage): void {
    if (ref.ref !== undefined) this.pages.set(`${ref.ref.pack}@${ref.ref.offset}`, page);
  }

  async readSummaries(run: RunReader, signal?: AbortSignal): Promise<PointSummary[]> {
    const { first, last } = run.block;
    const out: PointSummary[] = [];
    for (let i = 0; i < run.root.summaryBlobs.length; i++) {
      const from = first + i * SUMMARIES_PER_BLOB;
      const count = Math.min(SUMMARIES_PER_BLOB, last - from + 1);
      const bytes = await this.readBlob(run.root.summaryBlobs[i]!, `${run.what} summaries`, signal);
      out.push(...decodeSummaryBlob(bytes, from, count, this.config.volumeId, run.what));
    }
    return out;
  }

  /**
   * The PIT map of point `seq` (0: the empty volume), page by page. A span that cannot be read is
   * replaced by its children; a delta that cannot be read, or is missing with no span standing
   * in for it, makes the point unbuildable (ChainGapError).
   */
  async view(index: ChainIndex, seq: number, options: { signal?: AbortSignal; cacheBytes?: number } = {}): Promise<PitView> {
    if (seq === 0) return new PitView(this.geometry, this.pageRegions, 0, 0, [], options.cacheBytes);
    const standIn = async (run: RunReader, signal?: AbortSignal): Promise<RunReader[] | undefined> => {
      if (run.block.level === 0) return undefined;
      index.markUnreadable(run.block);
      const children: RunReader[] = [];
      for (const block of await index.cover(run.block.last, signal)) {
        if (block.last > run.block.first - 1) children.push(await this.readRun(block, signal));
      }
      return children;
    };
    for (;;) {
      throwIfAborted(options.signal);
      const cover = await index.cover(seq, options.signal);
      const runs: RunReader[] = [];
      let failed: Block | undefined;
      for (const block of cover) {
        try {
          runs.push(await this.readRun(block, options.signal));
        } catch (error) {
          if (!(error instanceof FormatError)) throw error;
          if (block.level === 0) {
            index.markUnreadable(block, error);
            throw new ChainGapError(block.last, seq, error);
          }
          failed = block;
          break;
        }
      }
      if (failed !== undefined) {
        index.markUnreadable(failed); // its children stand in for it
        continue;
      }
      return new PitView(this.geometry, this.pageRegions, seq, runs.at(-1)!.end, runs, options.cacheBytes, standIn);
    }
  }

  /**
   * What point `seq` is (kind, times, size): from the largest stored span that covers it (its
   * summaries are read once and kept), else from its delta. Largest first, because the top
   * levels are listed already and one span answers for many points.
   */
  async summary(index: ChainIndex, seq: number, signal?: AbortSignal): Promise<PointSummary> {
    if (seq < 1 || seq > index.latest) throw new ChainGapError(seq, seq);
    for (let level = index.topLevel; level >= 1; level--) {
      const size = this.fanout ** level;
      const last = Math.ceil(seq / size) * size;
      if (last > index.latest) continue;
      const block = await index.stored(level, last, signal);
      if (block === undefined) continue;
      try {
        const found = (await this.summariesOf(await this.readRun(block, signal), signal))[seq - block.first];
        if (found !== undefined) return found;
      } catch (error) {
        if (!(error instanceof FormatError)) throw error; // an unreadable span: its children say the same
      }
    }
    // Its own delta; one that cannot be read is that error (a corrupt delta is damage to report).
    const delta = await index.stored(0, seq, signal);
    if (delta === undefined) throw new ChainGapError(seq, seq);
    return (await (await this.readRun(delta, signal)).summaries(signal))[0]!;
  }

  private async summariesOf(run: RunReader, signal?: AbortSignal): Promise<PointSummary[]> {
    const key = blockKey(run.block);
    let cached = this.summaryCache.get(key);
    if (cached === undefined) this.summaryCache.set(key, (cached = await run.summaries(signal)));
    return cached;
  }

  /** Stores a pack; it becomes durable by the time commitDelta writes the delta naming it. */
  async putPack(key: string, bytes: Uint8Array, signal?: AbortSignal): Promise<void> {
    await this.store.put(key, bytes, { signal, deferSync: true });
  }

  /**
   * Commits a delta (its packs and page packs must already be stored: data first, then the
   * delta), then writes the spans that end at it. A span is only a shortcut for later reads, so
   * failing to write one is reported, not fatal (readers fold its children instead).
   */
  async commitDelta(delta: PendingDelta, index: ChainIndex, signal?: AbortSignal): Promise<CommitResult> {
    const opts = signal === undefined ? {} : { signal };
    await this.store.sync(opts); // packs and page packs, before the delta that names them
    const bytes = encodeDeltaRoot(delta.seq, delta.info, delta.pages, this.config.volumeId);
    try {
      await this.store.put(`deltas/${seqName(delta.seq)}`, bytes, { ...opts, ifAbsent: true });
    } catch (error) {
      if (error instanceof StoreError && error.kind === 'exists') {
        throw new CdpError('STORE_EXISTS', `delta ${seqName(delta.seq)} was committed by another writer meanwhile; run the command again`, {
          cause: error,
        });
      }
      throw error;
    }
    const block = index.block(0, delta.seq);
    index.added(block);
    const root: RunRoot = {
      level: 0,
      first: delta.seq,
      last: delta.seq,
      from: delta.seq - 1,
      to: delta.seq,
      count: delta.pages.reduce((n, p) => n + p.count, 0),
      end: delta.info.end,
      pages: delta.pages,
      delta: delta.info,
      summaries: undefined,
      summaryBlobs: [],
    };
    const run = new RunReader(block, root, this, bytes.length);
    this.roots.set(blockKey(block), run);
    const result: CommitResult = { run, spans: [], metadataBytes: bytes.length };
    try {
      for (let level = 1; delta.seq % this.fanout ** level === 0; level++) {
        result.metadataBytes += await this.ensureSpan(index, index.block(level, delta.seq), result.spans, signal);
      }
    } catch (error) {
      if (signal?.aborted === true) throw error;
      result.spanError = (error as Error).message;
    }
    return result;
  }

  /**
   * Writes `block` unless it is stored (or empty: compacted away): the merge of its children (a
   * missing child span is written first, from its own children). Returns the bytes of metadata stored.
   */
  private async ensureSpan(index: ChainIndex, block: Block, written: Block[], signal?: AbortSignal): Promise<number> {
    if (index.isEmpty(block) || (await index.has(block, signal))) return 0;
    const size = this.fanout ** (block.level - 1);
    let bytes = 0;
    const children: Block[] = [];
    for (let last = block.first + size - 1; last <= block.last; last += size) {
      const child = index.block(block.level - 1, last);
      if (index.isEmpty(child)) continue; // a compaction folded its points into a later one
      if (child.level > 0) bytes += await this.ensureSpan(index, child, written, signal);
      else if (!(await index.has(child, signal))) throw new ChainGapError(child.last, block.last);
      children.push(index.block(child.level, child.last)); // its generation, as listed now
    }
    const runs: RunReader[] = [];
    for (const child of children) runs.push(await this.readRun(child, signal));
    bytes += await this.writeMergedRun(block, runs, {}, signal);
    index.added(block);
    written.push(block);
    return bytes;
  }

  /**
   * Stores `block` (a span, or with `delta` a compacted delta; its generation names the key) as
   * the merge of `runs`: consecutive runs, oldest first, whose intervals chain (each one's `from`
   * is the `to` of the one before). The result holds points `runs[0].from + 1 … runs.at(-1).to`.
   * A span's summaries are its children's (a point no run holds is `removed`), unless given.
   * Returns the bytes of metadata stored.
   */
  async writeMergedRun(
    block: Block,
    runs: readonly RunReader[],
    options: { delta?: DeltaInfo; summaries?: PointSummary[]; relocate?: (page: RunPage) => RunPage | undefined },
    signal?: AbortSignal,
  ): Promise<number> {
    if (runs.length === 0) throw new Error(`${describeBlock(block)}: nothing to merge`);
    for (let i = 1; i < runs.length; i++) {
      if (runs[i]!.root.from !== runs[i - 1]!.root.to) {
        throw new FormatError('FORMAT_CORRUPT', runs[i]!.what, `holds points from ${runs[i]!.root.from + 1}, but the run before it (${runs[i - 1]!.what}) ends at ${runs[i - 1]!.root.to}`);
      }
    }
    const interval = { from: runs[0]!.root.from, to: runs.at(-1)!.root.to };
    const pageIds = [...new Set(runs.flatMap((run) => run.pages.map((p) => p.page)))].sort((a, b) => a - b);
    const inline = runs.reduce((n, run) => n + run.count, 0) <= this.inlineEntries;
    const pager = new PagePackWriter(this.store, block.last, { signal, blobs: this.blobs });
    const merged = async (page: number): Promise<PageRef> => {
      const parts = runs.filter((run) => run.hasPage(page));
      const only = parts.length === 1 ? parts[0]!.pageRef(page) : undefined;
      // A page only one child changed is that child's page: stored once, shared (as a
      // checkpoint shares the pages nothing changed since the one before).
      if (!inline && only?.ref !== undefined && options.relocate === undefined) return only;
      const pages = await Promise.all(parts.map((run) => run.page(page, signal) as Promise<RunPage>));
      let result = mergeRunPages(page, pages);
      if (options.relocate !== undefined) {
        const moved = options.relocate(result);
        // A page none of whose pieces moved stays where it is.
        if (moved === undefined && !inline && only?.ref !== undefined) return only;
        result = moved ?? result;
      }
      return { page, count: result.regions.length, ref: undefined, inline: result };
    };
    const refs: PageRef[] = [];
    const ahead: Array<Promise<PageRef>> = [];
    for (let i = 0; i < pageIds.length; i++) {
      while (ahead.length < MERGE_READ_AHEAD && i + ahead.length < pageIds.length) {
        const next = merged(pageIds[i + ahead.length]!);
        next.catch(() => {});
        ahead.push(next);
      }
      const ref = await ahead.shift()!;
      if (inline || ref.inline === undefined) refs.push(ref);
      else {
        const stored: PageRef = { page: ref.page, count: ref.count, ref: await pager.add(encodePage(ref.inline, this.config.volumeId, this.pageRegions)), inline: undefined };
        this.rememberPage(stored, ref.inline);
        refs.push(stored);
      }
    }
    let root: Uint8Array;
    if (options.delta !== undefined) {
      await pager.finish();
      root = encodeDeltaRoot(block.last, options.delta, refs, this.config.volumeId, interval);
    } else {
      const summaries = options.summaries !== undefined ? await this.summaryStorage(block, options.summaries, pager) : await this.spanSummaries(block, runs, pager, signal);
      await pager.finish();
      root = encodeSpanRoot({ ...block, ...interval, end: runs.at(-1)!.end }, refs, summaries, this.config.volumeId);
    }
    await this.store.sync(signal === undefined ? {} : { signal });
    try {
      await this.store.put(blockKey(block), root, { signal, ifAbsent: true });
    } catch (error) {
      // Another writer stored it meanwhile: a span is derived from its children alone.
      if (!(error instanceof StoreError && error.kind === 'exists')) throw error;
    }
    // The next level's merge reads it: keep its root.
    const decoded = block.level === 0 ? decodeDeltaRoot(root, block.last, this.context) : decodeSpanRoot(root, block, this.context);
    this.roots.set(blockKey(block), new RunReader(block, decoded, this, root.length));
    return root.length + pager.bytesWritten;
  }

  /** Summaries as a span stores them: inline for short spans, else in blobs. */
  private async summaryStorage(block: Block, all: readonly PointSummary[], pager: PagePackWriter): Promise<{ inline: PointSummary[] } | { blobs: BlobRef[] }> {
    if (block.last - block.first + 1 <= INLINE_SUMMARIES) return { inline: [...all] };
    const blobs: BlobRef[] = [];
    for (let at = 0; at < all.length; at += SUMMARIES_PER_BLOB) blobs.push(await pager.add(encodeSummaryBlob(all.slice(at, at + SUMMARIES_PER_BLOB), this.config.volumeId)));
    return { blobs };
  }

  /** A span's summaries: its children's (children's blobs reused when they line up); points no child holds are `removed`. */
  private async spanSummaries(
    block: Block,
    runs: readonly RunReader[],
    pager: PagePackWriter,
    signal?: AbortSignal,
  ): Promise<{ inline: PointSummary[] } | { blobs: BlobRef[] }> {
    const points = block.last - block.first + 1;
    const perChild = points / this.fanout;
    if (runs.length === this.fanout && perChild % SUMMARIES_PER_BLOB === 0 && runs.every((run) => run.block.level === block.level - 1 && run.root.summaryBlobs.length > 0)) {
      return { blobs: runs.flatMap((run) => run.root.summaryBlobs) };
    }
    const all: PointSummary[] = [];
    for (const run of runs) {
      while (block.first + all.length < run.block.first) all.push(removedSummary(block.first + all.length));
      all.push(...(await run.summaries(signal)));
    }
    while (all.length < points) all.push(removedSummary(block.first + all.length));
    return this.summaryStorage(block, all, pager);
  }

  /** Bytes [offset, offset + length) of a pack; read into `into` where the store can. */
  async readPackRange(pack: string, offset: number, length: number, signal?: AbortSignal, into?: Uint8Array): Promise<Uint8Array> {
    try {
      return await this.getObject(pack, `pack ${pack}`, signal, { range: { offset, length }, into });
    } catch (error) {
      // A range past the end of a pack means the pack was cut short: damaged data, not a store failure.
      if (error instanceof StoreError && error.kind === 'permanent') {
        const info = await this.store.head(pack, signal === undefined ? {} : { signal }).catch(() => undefined);
        if (info !== undefined && info.size < offset + length) {
          throw new FormatError('FORMAT_CORRUPT', `pack ${pack}`, `is truncated: ${info.size} bytes, but a region ends at byte ${offset + length}`, {
            cause: error,
          });
        }
      }
      throw error;
    }
  }

  /** A blob of a page pack, checked against the SHA-256 its ref names. */
  private async readBlob(blob: BlobRef, what: string, signal?: AbortSignal): Promise<Uint8Array> {
    let bytes: Uint8Array;
    try {
      bytes = await this.readPackRange(blob.pack, blob.offset, blob.length, signal);
    } catch (error) {
      if (error instanceof FormatError) throw new FormatError('FORMAT_CORRUPT', what, error.message, { cause: error });
      throw error;
    }
    if (!createHash('sha256').update(bytes).digest().equals(blob.digest)) {
      throw new FormatError('FORMAT_CORRUPT', what, `does not match its SHA-256 (in ${blob.pack} at ${blob.offset})`);
    }
    return this.blobs.open(bytes, what);
  }

  private async getObject(key: string, what: string, signal?: AbortSignal, options: GetOptions = {}): Promise<Uint8Array> {
    try {
      return await this.store.get(key, { ...options, signal });
    } catch (error) {
      if (error instanceof StoreError && error.kind === 'not-found') {
        throw new FormatError('FORMAT_CORRUPT', what, `is missing from ${this.store.location}`, { cause: error });
      }
      throw error;
    }
  }
}

/**
 * The view a writer appends to: the newest point's. The next delta is always `index.latest + 1`,
 * so a writer never fills a gap (a delta there would be computed against the wrong map) and
 * writes past one only when a span lets the newest point be built; otherwise it refuses.
 */
export async function viewForWriting(repo: Repository, index: ChainIndex, command: string, signal?: AbortSignal): Promise<PitView> {
  try {
    return await repo.view(index, index.latest, { signal });
  } catch (error) {
    if (!(error instanceof ChainGapError)) throw error;
    throw new FormatError(
      'FORMAT_CORRUPT',
      `delta ${seqName(error.missing)}`,
      `is ${error.unreadable === undefined ? 'missing' : `unreadable (${error.unreadable.message.slice(error.unreadable.what.length + 2)})`} and no span after it stands in for it, so the newest point in time (${index.latest}) cannot be built and ${command} has nothing to add to: ` +
        'put the missing object back, or restore the newest point that still restores (see cdp-s3 log) and start a new repository from it',
      { cause: error },
    );
  }
}

function alreadyInitialized(store: ObjectStore): CdpError {
  return new CdpError('REPO_EXISTS', `${store.location} already holds a repository; use it as it is, or choose another --repo`);
}
