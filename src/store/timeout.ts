// Bounds every store call attempt in time, so a request the server never answers (or answers
// ever more slowly) fails as 'retryable' and RetryingStore tries again, instead of hanging the
// command forever. The budget grows with the bytes moved: baseMs + bytes / minBytesPerSecond.
// A whole-object GET does not know its size up front: it has baseMs for the response headers,
// and once the adapter reports the body's length (GetOptions.onBodyLength: S3's Content-Length)
// the deadline moves to that length's budget counted from then, so a large object on a slow link
// gets the time its bytes need while a stalled header still times out at baseMs.
// Stacked inside the concurrency limit (open.ts), so time spent waiting for a slot is not
// counted. The attempt is aborted through the AbortSignal handed to the adapter (the S3 SDK then
// drops the connection), and the call fails at once even if the adapter ignores the signal.
// The caller's own cancellation still surfaces as AbortedError. Only for adapters whose I/O
// stops when the signal fires (S3): a local read cannot be aborted, and one given up on could
// still land in a GET's `into` buffer after the caller has reused it.

import { AbortedError, InvalidArgumentError, StoreError, throwIfAborted } from '../errors.js';
import { type Timer, realTimer } from '../util/timer.js';
import type { DeleteManyOptions, GetOptions, ListOptions, ObjectInfo, ObjectStore, PutOptions, ObjectLockState, ObjectVersion, Retention } from './types.js';

const MiB = 1024 * 1024;

export interface TimeoutOptions {
  /** Budget of an attempt that moves no data (HEAD, DELETE, a LIST page). Default 10 000. */
  baseMs?: number;
  /** An attempt may take bytes / this longer than baseMs. Default 1 MiB/s (10 s per 10 MiB). */
  minBytesPerSecond?: number;
  /** Runs the deadlines; tests inject one they advance by hand. Default: real timers. */
  timer?: Timer;
}

type Operation = 'get' | 'put' | 'head' | 'list' | 'delete' | 'lock' | 'retain';

/** The options with their defaults filled in; InvalidArgumentError names a bad one. */
export function checkTimeoutOptions(options: TimeoutOptions = {}): Required<TimeoutOptions> {
  const checked = {
    baseMs: options.baseMs ?? 10_000,
    minBytesPerSecond: options.minBytesPerSecond ?? MiB,
    timer: options.timer ?? realTimer,
  };
  if (!(Number.isFinite(checked.baseMs) && checked.baseMs > 0)) {
    throw new InvalidArgumentError(`request timeout ${checked.baseMs} ms must be a finite number above 0`);
  }
  if (!(Number.isFinite(checked.minBytesPerSecond) && checked.minBytesPerSecond > 0)) {
    throw new InvalidArgumentError(`minimum request throughput ${checked.minBytesPerSecond} bytes/s must be a finite number above 0`);
  }
  return checked;
}

export class TimeoutStore implements ObjectStore {
  readonly location: string;
  private readonly baseMs: number;
  private readonly minBytesPerSecond: number;
  private readonly timer: Timer;

  constructor(
    private readonly inner: ObjectStore,
    options: TimeoutOptions = {},
  ) {
    this.location = inner.location;
    ({ baseMs: this.baseMs, minBytesPerSecond: this.minBytesPerSecond, timer: this.timer } = checkTimeoutOptions(options));
  }

  /** The budget of one attempt that moves `bytes`. */
  budgetMs(bytes: number): number {
    return Math.ceil(this.baseMs + (bytes / this.minBytesPerSecond) * 1000);
  }

  get(key: string, options?: GetOptions): Promise<Uint8Array> {
    const range = options?.range;
    if (range !== undefined) return this.attempt('get', key, range.length, options?.signal, (signal) => this.inner.get(key, { ...options, signal }));
    // Whole object: the headers within baseMs, then the body within its own budget (see the top).
    return this.attempt('get', key, 0, options?.signal, (signal, extend) =>
      this.inner.get(key, {
        ...options,
        signal,
        onBodyLength: (bytes) => {
          extend(bytes);
          options?.onBodyLength?.(bytes);
        },
      }),
    );
  }

  put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    return this.attempt('put', key, body.length, options?.signal, (signal) => this.inner.put(key, body, { ...options, signal }));
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    return this.attempt('head', key, 0, options?.signal, (signal) => this.inner.head(key, { signal }));
  }

  deleteMany(keys: readonly string[], options?: DeleteManyOptions): Promise<void> {
    return this.attempt('delete', keys[0] ?? '', 0, options?.signal, (signal) => this.inner.deleteMany(keys, { ...options, signal }));
  }

  objectLock(options?: { signal?: AbortSignal }): Promise<ObjectLockState> {
    return this.attempt('lock', '', 0, options?.signal, (signal) => this.inner.objectLock({ signal }));
  }

  retain(key: string, retention: Retention, options?: { signal?: AbortSignal; versionId?: string }): Promise<void> {
    return this.attempt('retain', key, 0, options?.signal, (signal) => this.inner.retain(key, retention, { ...options, signal }));
  }

  /** Each step has its own budget, like list. */
  listVersions(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectVersion> {
    return this.steps(prefix, options?.signal, (signal) => this.inner.listVersions(prefix, { ...options, signal }));
  }

  delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    return this.attempt('delete', key, 0, options?.signal, (signal) => this.inner.delete(key, { signal }));
  }

  /** Durability of deferred local writes: bounded by the disk, not by a server. */
  sync(options?: { signal?: AbortSignal }): Promise<void> {
    return this.inner.sync(options);
  }

  /** Each step of the listing (a page request, at most) has its own budget. */
  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    return this.steps(prefix, options?.signal, (signal) => this.inner.list(prefix, { ...options, signal }));
  }

  private async *steps<T>(prefix: string, caller: AbortSignal | undefined, open: (signal: AbortSignal) => AsyncIterable<T>): AsyncIterable<T> {
    // One signal for the whole listing, since the adapter takes it once; a step that runs out
    // of time aborts it, which ends the listing (RetryingStore restarts one that yielded nothing).
    const listing = new AbortController();
    const forward = (): void => listing.abort(caller?.reason);
    caller?.addEventListener('abort', forward, { once: true });
    const iterator = open(listing.signal)[Symbol.asyncIterator]();
    try {
      for (;;) {
        const step = await this.attempt('list', prefix, 0, caller, () => iterator.next(), listing);
        if (step.done === true) return;
        yield step.value;
      }
    } finally {
      caller?.removeEventListener('abort', forward);
      await iterator.return?.().catch(() => undefined);
    }
  }

  private async attempt<T>(
    operation: Operation,
    key: string,
    bytes: number,
    caller: AbortSignal | undefined,
    fn: (signal: AbortSignal, extend: (bytes: number) => void) => Promise<T>,
    shared?: AbortController,
  ): Promise<T> {
    throwIfAborted(caller);
    const controller = shared ?? new AbortController();
    let stop!: (error: Error) => void;
    const stopped = new Promise<never>((_, reject) => (stop = reject));
    const onCallerAbort = (): void => {
      controller.abort(caller?.reason);
      stop(new AbortedError('cancelled', { cause: caller?.reason }));
    };
    caller?.addEventListener('abort', onCallerAbort, { once: true });
    let timedOut: StoreError | undefined;
    const arm = (bytes: number): (() => void) => {
      const ms = this.budgetMs(bytes);
      return this.timer.schedule(() => {
        timedOut = new StoreError(
          'retryable',
          `${operation.toUpperCase()} ${key} in ${this.location}: no answer within ${(ms / 1000).toFixed(1)} s (the per-attempt timeout${bytes > 0 ? ` for ${bytes} bytes` : ''})`,
          { key },
        );
        controller.abort(timedOut);
        stop(timedOut);
      }, ms);
    };
    let cancel = arm(bytes);
    let settled = false;
    // The body's budget replaces what is left of the headers' (it is never shorter: it holds baseMs too).
    const extend = (bodyBytes: number): void => {
      if (settled || timedOut !== undefined) return;
      cancel();
      cancel = arm(bodyBytes);
    };
    try {
      return await Promise.race([fn(controller.signal, extend), stopped]);
    } catch (error) {
      if (caller?.aborted === true) throw error instanceof AbortedError ? error : new AbortedError('cancelled', { cause: error });
      if (timedOut !== undefined) throw timedOut;
      throw error;
    } finally {
      settled = true;
      cancel();
      caller?.removeEventListener('abort', onCallerAbort);
    }
  }
}
