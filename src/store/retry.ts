// Retries transient store failures ('retryable', 'unreachable') with exponential backoff and
// full jitter (delay = random(0, min(max, base·2^(attempt-1)))), so many clients throttled at
// once spread out instead of retrying in lockstep. Every other failure surfaces at once.
//
// Conditional puts: if an ifAbsent put fails ambiguously (e.g. the connection drops after the
// server stored the object) and the retry then gets 'exists', that 'exists' is surfaced as is.
// Callers must treat 'exists' from a conditional put as "maybe our own earlier write".

import { setTimeout as delay } from 'node:timers/promises';
import { AbortedError, StoreError, throwIfAborted } from '../errors.js';
import type { GetOptions, ObjectInfo, ObjectStore, PutOptions } from './types.js';

export interface RetryInfo {
  operation: 'get' | 'put' | 'head' | 'list' | 'delete';
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
  baseDelayMs?: number;
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
    this.attempts = Math.max(1, options.attempts ?? 6);
    this.baseDelayMs = options.baseDelayMs ?? 100;
    this.maxDelayMs = options.maxDelayMs ?? 5000;
    this.sleep = options.sleep ?? ((ms, signal) => delay(ms, undefined, signal === undefined ? {} : { signal }));
    this.random = options.random ?? Math.random;
    this.onRetry = options.onRetry;
  }

  get(key: string, options?: GetOptions): Promise<Uint8Array> {
    return this.run('get', key, options?.signal, () => this.inner.get(key, options));
  }

  put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    return this.run('put', key, options?.signal, () => this.inner.put(key, body, options));
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    return this.run('head', key, options?.signal, () => this.inner.head(key, options));
  }

  delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    return this.run('delete', key, options?.signal, () => this.inner.delete(key, options));
  }
  sync(options?: { signal?: AbortSignal }): Promise<void> {
    return this.inner.sync(options);
  }


  /**
   * Retries only until the first item (or the end) arrives: once items have been yielded, a
   * restart would yield them again, so a later failure surfaces to the caller.
   */
  async *list(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo> {
    const { iterator, first } = await this.run('list', prefix, options?.signal, async () => {
      const iterator = this.inner.list(prefix, options)[Symbol.asyncIterator]();
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
        if (!(error instanceof StoreError) || !RETRIED.has(error.kind) || attempt >= this.attempts) throw error;
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
