// A wrapper that counts the bytes a use case fetches through a store (reported by scan, which
// must download no region data).

import { DelegatingStore } from './delegating.js';
import type { GetOptions } from './types.js';

export class CountingStore extends DelegatingStore {
  bytesFetched = 0;
  gets = 0;

  override async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    const bytes = await this.inner.get(key, options);
    this.gets++;
    this.bytesFetched += bytes.length;
    return bytes;
  }
}
