// A wrapper that counts the bytes a use case fetches through a store (reported by scan, which
// must download no region data).

import type { GetOptions, ObjectInfo, ObjectStore, PutOptions } from './types.js';

export class CountingStore implements ObjectStore {
  readonly location: string;
  bytesFetched = 0;
  gets = 0;

  constructor(private readonly inner: ObjectStore) {
    this.location = inner.location;
  }

  async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    const bytes = await this.inner.get(key, options);
    this.gets++;
    this.bytesFetched += bytes.length;
    return bytes;
  }

  put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    return this.inner.put(key, body, options);
  }

  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    return this.inner.head(key, options);
  }

  list(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo> {
    return this.inner.list(prefix, options);
  }

  delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    return this.inner.delete(key, options);
  }

  sync(options?: { signal?: AbortSignal }): Promise<void> {
    return this.inner.sync(options);
  }
}
