// A repository: one volume's config, delta chain, checkpoints and packs in an object store.
// This layer knows the keys and codecs and the commit order; use cases live in src/core.

import { endianness } from 'node:os';
import pLimit from 'p-limit';
import { CdpError, FormatError, StoreError, throwIfAborted } from '../errors.js';
import { type Delta, type Geometry, PitMap } from '../model/pit-map.js';
import type { GetOptions, ObjectStore } from '../store/types.js';
import { decodeCheckpoint, decodeDelta, encodeCheckpoint, encodeDelta } from './chain-codec.js';
import { type RepoConfig, configGeometry, decodeConfig, encodeConfig } from './config.js';
import { CHECKPOINT_PREFIX, CONFIG_KEY, DELTA_PREFIX, checkpointKey, deltaKey, seqName, seqOfKey } from './keys.js';

if (endianness() !== 'LE') throw new Error('cdp-s3 stores little-endian arrays and runs on little-endian hosts only');

/** How many metadata objects are fetched at once when reading the chain. */
const METADATA_CONCURRENCY = 16;

export class Repository {
  readonly store: ObjectStore;
  readonly config: RepoConfig;
  readonly geometry: Geometry;

  private constructor(store: ObjectStore, config: RepoConfig) {
    this.store = store;
    this.config = config;
    this.geometry = configGeometry(config);
  }

  /** Writes a new config; refuses if the repository already has one. */
  static async init(store: ObjectStore, config: RepoConfig, signal?: AbortSignal): Promise<Repository> {
    const existing = await store.head(CONFIG_KEY, signal === undefined ? {} : { signal });
    if (existing !== undefined) throw alreadyInitialized(store);
    try {
      await store.put(CONFIG_KEY, encodeConfig(config), signal === undefined ? { ifAbsent: true } : { ifAbsent: true, signal });
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
    return new Repository(store, decodeConfig(bytes));
  }

  /**
   * Sequence numbers of the deltas stored, ascending. A missing delta (a gap) is simply absent:
   * `listChain` says which points in time it keeps from being built.
   */
  async deltaSeqs(signal?: AbortSignal): Promise<number[]> {
    return this.listSeqs(DELTA_PREFIX, signal);
  }

  /** The deltas and checkpoints stored, and the deltas missing between them. */
  async listChain(signal?: AbortSignal): Promise<ChainListing> {
    const [seqs, checkpoints] = await Promise.all([this.deltaSeqs(signal), this.checkpointSeqs(signal)]);
    return new ChainListing(seqs, checkpoints);
  }

  async checkpointSeqs(signal?: AbortSignal): Promise<number[]> {
    return this.listSeqs(CHECKPOINT_PREFIX, signal);
  }

  async readDelta(seq: number, signal?: AbortSignal): Promise<Delta> {
    const bytes = await this.getObject(deltaKey(seq), `delta ${seqName(seq)}`, signal);
    return decodeDelta(bytes, seq, this.config.volumeId, this.geometry.regionCount);
  }

  /** Reads deltas in parallel and returns them in the order asked. */
  async readDeltas(seqs: number[], signal?: AbortSignal): Promise<Delta[]> {
    const limit = pLimit(METADATA_CONCURRENCY);
    return Promise.all(seqs.map((seq) => limit(() => this.readDelta(seq, signal))));
  }

  async readCheckpoint(seq: number, signal?: AbortSignal): Promise<PitMap> {
    const bytes = await this.getObject(checkpointKey(seq), `checkpoint ${seqName(seq)}`, signal);
    return decodeCheckpoint(bytes, seq, this.config.volumeId, this.geometry.regionCount);
  }

  /**
   * The PIT map at delta `seq` (0: the empty volume before the first delta): the newest
   * checkpoint at or before it, with the deltas after that folded in. A damaged checkpoint is
   * skipped in favour of an older one (or the start of the chain), since deltas alone suffice,
   * but never one before a missing delta: past a gap only a checkpoint can stand in for the
   * lost link, and without one the point cannot be built (ChainGapError).
   */
  async loadPit(seq: number, options: { chain?: ChainListing; signal?: AbortSignal } = {}): Promise<PitMap> {
    if (seq === 0) return new PitMap(this.geometry.regionCount);
    const chain = options.chain ?? (await this.listChain(options.signal));
    const gap = chain.lastMissing(seq);
    let pit: PitMap | undefined;
    for (const c of chain.startsFor(seq)) {
      try {
        pit = await this.readCheckpoint(c, options.signal);
        break;
      } catch (error) {
        if (!(error instanceof FormatError)) throw error;
      }
    }
    if (pit === undefined && gap !== undefined) throw new ChainGapError(gap, seq);
    pit ??= new PitMap(this.geometry.regionCount);
    const todo: number[] = [];
    for (let s = pit.seq + 1; s <= seq; s++) todo.push(s);
    // Fold in order, reading a bounded window ahead.
    for (let i = 0; i < todo.length; i += METADATA_CONCURRENCY) {
      throwIfAborted(options.signal);
      for (const delta of await this.readDeltas(todo.slice(i, i + METADATA_CONCURRENCY), options.signal)) {
        pit.apply(delta);
        delta.changed.dispose();
      }
    }
    return pit;
  }

  /** Stores a pack; it becomes durable by the time commitDelta writes the delta naming it. */
  async putPack(key: string, bytes: Uint8Array, signal?: AbortSignal): Promise<void> {
    await this.store.put(key, bytes, { signal, deferSync: true });
  }

  /**
   * Commits a delta (its packs must already be stored: data first, then the delta), then a
   * checkpoint of `pit` (the map after this delta) when the interval says so.
   */
  async commitDelta(delta: Delta, pit: PitMap, signal?: AbortSignal): Promise<{ checkpoint: boolean; checkpointError?: string }> {
    const opts = signal === undefined ? {} : { signal };
    await this.store.sync(opts); // the packs, before the delta that names them
    try {
      await this.store.put(deltaKey(delta.seq), encodeDelta(delta, this.config.volumeId), { ...opts, ifAbsent: true });
    } catch (error) {
      if (error instanceof StoreError && error.kind === 'exists') {
        throw new CdpError('STORE_EXISTS', `delta ${seqName(delta.seq)} was committed by another writer meanwhile; run the command again`, {
          cause: error,
        });
      }
      throw error;
    }
    if (delta.seq % this.config.checkpointInterval !== 0) return { checkpoint: false };
    // The point in time is committed now; a checkpoint is only a shortcut for later reads, so
    // failing to write one is reported, not fatal (restores fold the deltas instead).
    try {
      await this.store.put(checkpointKey(delta.seq), encodeCheckpoint(pit, this.config.volumeId), opts);
      return { checkpoint: true };
    } catch (error) {
      return { checkpoint: false, checkpointError: (error as Error).message };
    }
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

  private async listSeqs(prefix: string, signal?: AbortSignal): Promise<number[]> {
    const seqs: number[] = [];
    for await (const info of this.store.list(prefix, signal === undefined ? {} : { signal })) {
      const seq = seqOfKey(info.key, prefix);
      if (seq !== undefined) seqs.push(seq);
    }
    return seqs.sort((a, b) => a - b);
  }
}

/**
 * What a listing of `deltas/` and `checkpoints/` says about the chain. Point in time `p` can be
 * built iff delta `p` is stored and either no delta `1..p` is missing, or a checkpoint `c` is
 * stored with `g <= c <= p`, `g` being the newest missing delta before `p` (the deltas `c+1..p`
 * are then all stored). Whether they are readable is found out when they are read.
 */
export class ChainListing {
  /** Deltas between 1 and the newest stored one that are not stored, ascending. */
  readonly missing: number[] = [];
  private readonly stored: Set<number>;

  constructor(
    /** Stored delta seqs, ascending. */
    readonly seqs: number[],
    /** Stored checkpoint seqs, ascending. */
    readonly checkpoints: number[],
  ) {
    this.stored = new Set(seqs);
    let next = 1;
    for (const seq of seqs) {
      for (; next < seq; next++) this.missing.push(next);
      next = seq + 1;
    }
  }

  get latest(): number {
    return this.seqs.at(-1) ?? 0;
  }

  has(seq: number): boolean {
    return this.stored.has(seq);
  }

  /** The newest missing delta at or before `seq`, if any. */
  lastMissing(seq: number): number | undefined {
    const i = lastIndexAtOrBefore(this.missing, seq);
    return i < 0 ? undefined : this.missing[i];
  }

  /** Checkpoints a fold to `seq` may start from, newest first: at or before it, none before a gap. */
  startsFor(seq: number): number[] {
    const gap = this.lastMissing(seq) ?? 0;
    const out: number[] = [];
    for (let i = lastIndexAtOrBefore(this.checkpoints, seq); i >= 0 && this.checkpoints[i]! >= gap; i--) out.push(this.checkpoints[i]!);
    return out;
  }

  /** The missing delta that keeps point `seq` from being built, if any (see the class comment). */
  blockedBy(seq: number): number | undefined {
    if (!this.has(seq)) return seq;
    const gap = this.lastMissing(seq);
    return gap === undefined || this.startsFor(seq).length > 0 ? undefined : gap;
  }
}

/** Index of the last element at or before `value` in an ascending array, or -1. */
function lastIndexAtOrBefore(sorted: readonly number[], value: number): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid]! <= value) lo = mid + 1;
    else hi = mid;
  }
  return lo - 1;
}

/** A point in time lies past a missing delta and no stored checkpoint stands in for it. */
export class ChainGapError extends FormatError {
  constructor(
    /** The missing delta. */
    readonly missing: number,
    /** The point in time that cannot be built. */
    readonly point: number,
  ) {
    super(
      'FORMAT_CORRUPT',
      `delta ${seqName(missing)}`,
      `is missing and no readable checkpoint from it to point in time ${point} stands in for it, so ${missing === point ? 'that point' : `points ${missing + 1} to ${point}`} cannot be built; ` +
        (missing === 1 ? 'no earlier point exists' : 'earlier points still restore') + ' (see cdp-s3 log and cdp-s3 verify)',
    );
  }
}

/**
 * The PIT map a writer appends to: the newest point's. The next delta is always `chain.latest + 1`,
 * so a writer never fills a gap (a delta there would be computed against the wrong map) and
 * writes past one only when a checkpoint lets the newest point be built; otherwise it refuses.
 */
export async function loadNewestForWriting(repo: Repository, chain: ChainListing, command: string, signal?: AbortSignal): Promise<PitMap> {
  try {
    return await repo.loadPit(chain.latest, { chain, signal });
  } catch (error) {
    if (!(error instanceof ChainGapError)) throw error;
    throw new FormatError(
      'FORMAT_CORRUPT',
      `delta ${seqName(error.missing)}`,
      `is missing and no readable checkpoint after it stands in for it, so the newest point in time (${chain.latest}) cannot be built and ${command} has nothing to add to: ` +
        'put the missing object back, or restore the newest point that still restores (see cdp-s3 log) and start a new repository from it',
      { cause: error },
    );
  }
}

function alreadyInitialized(store: ObjectStore): CdpError {
  return new CdpError('REPO_EXISTS', `${store.location} already holds a repository; use it as it is, or choose another --repo`);
}
