// A fault injector: an ObjectStore that delegates every call to a real store (FsStore, S3Store,
// or the stack openStore builds) and lets a test fail or abort at a chosen moment.

import { DelegatingStore } from '../../src/store/delegating.js';
import type { GetOptions, ObjectInfo, ObjectStore, PutOptions } from '../../src/store/types.js';

export interface FaultHooks {
  /** Runs before a put is delegated; throw to make the put fail without reaching the store. */
  beforePut?: (key: string, body: Uint8Array, options: PutOptions | undefined) => void | Promise<void>;
  /** Runs after a put succeeded; throw to lose the reply of a put that the store did commit. */
  afterPut?: (key: string, body: Uint8Array, options: PutOptions | undefined) => void | Promise<void>;
  /** Runs before a get is delegated. */
  beforeGet?: (key: string, options: GetOptions | undefined) => void | Promise<void>;
  /** Runs after a get returned its bytes (the caller still receives them). */
  afterGet?: (key: string, options: GetOptions | undefined, bytes: Uint8Array) => void | Promise<void>;
}

export class FaultStore extends DelegatingStore {
  readonly puts: string[] = [];
  readonly gets: Array<{ key: string; ranged: boolean }> = [];
  readonly heads: string[] = [];

  constructor(
    inner: ObjectStore,
    private readonly hooks: FaultHooks = {},
  ) {
    super(inner);
  }

  override async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    this.gets.push({ key, ranged: options?.range !== undefined });
    await this.hooks.beforeGet?.(key, options);
    const bytes = await this.inner.get(key, options);
    await this.hooks.afterGet?.(key, options, bytes);
    return bytes;
  }

  override head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    this.heads.push(key);
    return this.inner.head(key, options);
  }

  override async put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    this.puts.push(key);
    await this.hooks.beforePut?.(key, body, options);
    await this.inner.put(key, body, options);
    await this.hooks.afterPut?.(key, body, options);
  }
}
