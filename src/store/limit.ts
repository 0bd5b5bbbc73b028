// Caps the number of store calls in flight (HTTP connections, open files). Stacked inside the
// retry wrapper, so a retry sleeping out its backoff does not hold a slot.

import pLimit, { type LimitFunction } from 'p-limit';
import { throwIfAborted } from '../errors.js';
import type { DeleteManyOptions, GetOptions, ListOptions, ObjectInfo, ObjectLockState, ObjectStore, ObjectVersion, PutOptions, Retention } from './types.js';

export class LimitedStore implements ObjectStore {
  readonly location: string;
  private readonly limit: LimitFunction;

  constructor(
    private readonly inner: ObjectStore,
    options: { concurrency?: number } = {},
  ) {
    this.location = inner.location;
    this.limit = pLimit(options.concurrency ?? 8);
  }

  get(key: string, options?: GetOptions): Promise<Uint8Array> {
    return this.run(options?.signal, () => this.inner.get(key, options));
  }

  put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    return this.run(options?.signal, () => this.inner.put(key, body, options));
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    return this.run(options?.signal, () => this.inner.head(key, options));
  }

  deleteMany(keys: readonly string[], options?: DeleteManyOptions): Promise<void> {
    return this.run(options?.signal, () => this.inner.deleteMany(keys, options));
  }

  objectLock(options?: { signal?: AbortSignal }): Promise<ObjectLockState> {
    return this.run(options?.signal, () => this.inner.objectLock(options));
  }

  retain(key: string, retention: Retention, options?: { signal?: AbortSignal; versionId?: string }): Promise<void> {
    return this.run(options?.signal, () => this.inner.retain(key, retention, options));
  }

  /** Not limited, like list. */
  listVersions(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectVersion> {
    return this.inner.listVersions(prefix, options);
  }

  delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    return this.run(options?.signal, () => this.inner.delete(key, options));
  }
  sync(options?: { signal?: AbortSignal }): Promise<void> {
    return this.inner.sync(options);
  }


  /** Not limited: a listing is one sequential request at a time and may be consumed slowly. */
  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix, options);
  }

  private run<T>(signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    // A call cancelled while queued gives up its turn without touching the store.
    return this.limit(() => {
      throwIfAborted(signal);
      return fn();
    });
  }
}
