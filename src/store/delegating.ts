// A store that forwards every call to another: the base of wrappers that change only a few
// operations (counting, fault injection in tests).

import type { DeleteManyOptions, GetOptions, ListOptions, ObjectInfo, ObjectLockState, ObjectStore, ObjectVersion, PutOptions, Retention } from './types.js';

export class DelegatingStore implements ObjectStore {
  readonly location: string;

  constructor(protected readonly inner: ObjectStore) {
    this.location = inner.location;
  }

  /** The store this one forwards to (a wrapper's properties are found through it: repo/sealed-store.ts storeKeys). */
  get wrapped(): ObjectStore {
    return this.inner;
  }

  get(key: string, options?: GetOptions): Promise<Uint8Array> {
    return this.inner.get(key, options);
  }

  put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    return this.inner.put(key, body, options);
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    return this.inner.head(key, options);
  }

  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix, options);
  }

  delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    return this.inner.delete(key, options);
  }

  deleteMany(keys: readonly string[], options?: DeleteManyOptions): Promise<void> {
    return this.inner.deleteMany(keys, options);
  }

  objectLock(options?: { signal?: AbortSignal }): Promise<ObjectLockState> {
    return this.inner.objectLock(options);
  }

  retain(key: string, retention: Retention, options?: { signal?: AbortSignal; versionId?: string }): Promise<void> {
    return this.inner.retain(key, retention, options);
  }

  listVersions(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectVersion> {
    return this.inner.listVersions(prefix, options);
  }

  sync(options?: { signal?: AbortSignal }): Promise<void> {
    return this.inner.sync(options);
  }
}
