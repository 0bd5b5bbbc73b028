// Retries transient store failures ('retryable', 'unreachable') with exponential backoff and
// full jitter (delay = random(0, min(max, base·2^(attempt-1)))), so many clients throttled at
// once spread out instead of retrying in lockstep. Every other failure surfaces at once.
//
// When the attempts run out, the last error surfaces with "(gave up after N attempts)" added.
//
// Conditional puts: if an ifAbsent put fails ambiguously (e.g. the reply is lost after the
// server stored the object) and a retry then gets 'exists', the object is compared with ours: a
// HEAD first (another size is another writer's object, and is not downloaded), then a ranged
// read of exactly its size (so its per-attempt timeout is sized to it); if it is byte for byte
// what this put wrote, it is our own earlier attempt and the put succeeded. Otherwise 'exists'
// surfaces (another writer's object).

import { setTimeout as delay } from 'node:timers/promises';
import { AbortedError, InvalidArgumentError, StoreError, throwIfAborted } from '../errors.js';
import type { DeleteManyOptions, GetOptions, ListOptions, ObjectInfo, ObjectLockState, ObjectStore, ObjectVersion, PutOptions, Retention } from './types.js';

export interface RetryInfo {
  operation: 'get' | 'put' | 'head' | 'list' | 'delete' | 'retain' | 'lock';
  /** The key, or the prefix for list. */
  key: string;
  /** The attempt that failed, from 1. */
  attempt: number;
  delayMs: number;
  error: StoreError;
}

export interface RetryOptions {
  /** Total attempts including the first. Default 6. */
  attempts?: number;
  /** Backoff before the second attempt is at most this; it doubles per attempt. Default 100. */
  baseDelayMs?: number;
  /** Cap of the backoff. Default 5000. */
  maxDelayMs?: number;
  /** Waits `ms`, rejecting when `signal` fires; injectable for tests. */
  sleep?: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
  /** A number in [0, 1) for the jitter; injectable for tests. Default Math.random. */
  random?: () => number;
  onRetry?: (info: RetryInfo) => void;
}

const RETRIED: ReadonlySet<StoreError['kind']> = new Set(['retryable', 'unreachable']);

export class RetryingStore implements ObjectStore {
  readonly location: string;
  private readonly attempts: number;
  private readonly baseDelayMs: number;
  private readonly maxDelayMs: number;
  private readonly sleep: (ms: number, signal: AbortSignal | undefined) => Promise<void>;
  private readonly random: () => number;
  private readonly onRetry: ((info: RetryInfo) => void) | undefined;

  constructor(
    private readonly inner: ObjectStore,
    options: RetryOptions = {},
  ) {
    this.location = inner.location;
    this.attempts = options.attempts ?? 6;
    this.baseDelayMs = options.baseDelayMs ?? 100;
    this.maxDelayMs = options.maxDelayMs ?? 5000;
    if (!Number.isSafeInteger(this.attempts) || this.attempts < 1) {
      throw new InvalidArgumentError(`retry attempts ${this.attempts} must be a whole number of at least 1`);
    }
    for (const [name, value] of [['base delay', this.baseDelayMs], ['max delay', this.maxDelayMs]] as const) {
      if (!Number.isFinite(value) || value < 0) throw new InvalidArgumentError(`retry ${name} ${value} ms must be a finite number of at least 0`);
    }
    this.sleep = options.sleep ?? ((ms, signal) => delay(ms, undefined, signal === undefined ? {} : { signal }));
    this.random = options.random ?? Math.random;
    this.onRetry = options.onRetry;
  }

  get(key: string, options?: GetOptions): Promise<Uint8Array> {
    return this.run('get', key, options?.signal, () => this.inner.get(key, options));
  }

  put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    let retried = false;
    return this.run('put', key, options?.signal, async () => {
      const isRetry = retried;
      retried = true;
      try {
        await this.inner.put(key, body, options);
      } catch (error) {
        if (!isRetry || options?.ifAbsent !== true || !(error instanceof StoreError && error.kind === 'exists')) throw error;
        // An earlier attempt may have stored the object and lost the reply (see the top).
        if (!(await this.holds(key, body, options.signal))) throw error;
      }
    });
  }

  /** Whether `key` holds exactly `body`; a failure to read is thrown (and the put retried). */
  private async holds(key: string, body: Uint8Array, signal: AbortSignal | undefined): Promise<boolean> {
    const io = signal === undefined ? {} : { signal };
    const info = await this.inner.head(key, io);
    if (info === undefined || info.size !== body.length) return false;
    if (body.length === 0) return true;
    try {
      const stored = await this.inner.get(key, { ...io, range: { offset: 0, length: info.size } });
      return Buffer.from(stored.buffer, stored.byteOffset, stored.length).equals(body);
    } catch (error) {
      if (error instanceof StoreError && error.kind === 'not-found') return false;
      throw error;
    }
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    return this.run('head', key, options?.signal, () => this.inner.head(key, options));
  }

  delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    return this.run('delete', key, options?.signal, () => this.inner.delete(key, options));
  }

  /** Deleting is idempotent: a batch is retried whole. */
  deleteMany(keys: readonly string[], options?: DeleteManyOptions): Promise<void> {
    return this.run('delete', keys[0] ?? '', options?.signal, () => this.inner.deleteMany(keys, options));
  }

  objectLock(options?: { signal?: AbortSignal }): Promise<ObjectLockState> {
    return this.run('lock', '', options?.signal, () => this.inner.objectLock(options));
  }

  /** Setting the same retention again is harmless: retried like a put. */
  retain(key: string, retention: Retention, options?: { signal?: AbortSignal; versionId?: string }): Promise<void> {
    return this.run('retain', key, options?.signal, () => this.inner.retain(key, retention, options));
  }

  /** Retried until the first item arrives, like list. */
  listVersions(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectVersion> {
    return this.listing(prefix, options?.signal, () => this.inner.listVersions(prefix, options));
  }

  sync(options?: { signal?: AbortSignal }): Promise<void> {
    return this.inner.sync(options);
  }


  /**
   * Retries only until the first item (or the end) arrives: once items have been yielded, a
   * restart would yield them again, so a later failure surfaces to the caller.
   */
  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    return this.listing(prefix, options?.signal, () => this.inner.list(prefix, options));
  }

  private async *listing<T>(prefix: string, signal: AbortSignal | undefined, open: () => AsyncIterable<T>): AsyncIterable<T> {
    const { iterator, first } = await this.run('list', prefix, signal, async () => {
      const iterator = open()[Symbol.asyncIterator]();
      return { iterator, first: await iterator.next() };
    });
    try {
      for (let result = first; result.done !== true; result = await iterator.next()) yield result.value;
    } finally {
      await iterator.return?.();
    }
  }

  private async run<T>(operation: RetryInfo['operation'], key: string, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      throwIfAborted(signal);
      try {
        return await fn();
      } catch (error) {
        if (signal?.aborted === true) throw new AbortedError('cancelled', { cause: error });
        if (!(error instanceof StoreError) || !RETRIED.has(error.kind)) throw error;
        if (attempt >= this.attempts) {
          const tries = `${attempt} attempt${attempt === 1 ? '' : 's'}`;
          throw new StoreError(error.kind, `${error.message} (gave up after ${tries})`, { cause: error, ...(error.key !== undefined ? { key: error.key } : {}) });
        }
        const delayMs = this.random() * Math.min(this.maxDelayMs, this.baseDelayMs * 2 ** (attempt - 1));
        this.onRetry?.({ operation, key, attempt, delayMs, error });
        await this.sleep(delayMs, signal).catch((sleepError: unknown) => {
          if (signal?.aborted === true) throw new AbortedError('cancelled', { cause: sleepError });
          throw sleepError;
        });
      }
    }
  }
}
