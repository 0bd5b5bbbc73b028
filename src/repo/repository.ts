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

  /** Sequence numbers of committed deltas, ascending; throws if the chain has a gap. */
  async deltaSeqs(signal?: AbortSignal): Promise<number[]> {
    const seqs = await this.listSeqs(DELTA_PREFIX, signal);
    for (let i = 0; i < seqs.length; i++) {
      if (seqs[i] !== i + 1) {
        throw new FormatError('FORMAT_CORRUPT', 'delta chain', `delta ${seqName(i + 1)} is missing; the chain cannot be folded past it`);
      }
    }
    return seqs;
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
   * skipped in favour of an older one (or the start of the chain), since deltas alone suffice.
   */
  async loadPit(seq: number, options: { checkpoints?: number[]; signal?: AbortSignal } = {}): Promise<PitMap> {
    const checkpoints = options.checkpoints ?? (await this.checkpointSeqs(options.signal));
    let pit: PitMap | undefined;
    for (const c of checkpoints.filter((s) => s <= seq).reverse()) {
      try {
        pit = await this.readCheckpoint(c, options.signal);
        break;
      } catch (error) {
        if (!(error instanceof FormatError)) throw error;
      }
    }
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

function alreadyInitialized(store: ObjectStore): CdpError {
  return new CdpError('REPO_EXISTS', `${store.location} already holds a repository; use it as it is, or choose another --repo`);
}
