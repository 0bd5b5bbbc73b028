// An encrypted repository's objects, sealed and opened on their way to and from the store: every
// whole object (runs, records, marks, locks, status) is AES-256-GCM with the object's key as
// associated data, so an object moved to another key is refused. Packs and page packs pass
// through: their pieces and blobs are sealed one by one (pieces.ts, page-packs.ts), so ranged
// GETs still work; `config` and `keys/` pass through (a reader needs them before it has a key).

import { StoreError } from '../errors.js';
import { DelegatingStore } from '../store/delegating.js';
import type { GetOptions, ObjectStore, PutOptions } from '../store/types.js';
import type { RepoKeys } from './crypto.js';
import { CONFIG_KEY, PACK_PREFIX, PAGE_PACK_PREFIX } from './keys.js';
import { KEY_PREFIX } from './key-files.js';

/** Whether the object at `key` is sealed whole by SealedStore. */
export function sealedWhole(key: string): boolean {
  return key !== CONFIG_KEY && !key.startsWith(KEY_PREFIX) && !key.startsWith(PACK_PREFIX) && !key.startsWith(PAGE_PACK_PREFIX);
}

function objectAad(key: string): Uint8Array {
  return Buffer.from(`cdp-s3 object ${key}`, 'utf8');
}

export class SealedStore extends DelegatingStore {
  constructor(
    /** The store underneath, whose objects are sealed (key files and packs are read through it). */
    readonly plain: ObjectStore,
    readonly keys: RepoKeys,
  ) {
    super(plain);
  }

  override async get(key: string, options: GetOptions = {}): Promise<Uint8Array> {
    if (!sealedWhole(key)) return this.plain.get(key, options);
    if (options.range !== undefined) throw new StoreError('permanent', `${key} is sealed whole: it cannot be read by range`);
    const { into: _into, ...rest } = options;
    const bytes = await this.plain.get(key, rest);
    return this.keys.sealer.open(bytes, objectAad(key), key);
  }

  override async put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    await this.plain.put(key, sealedWhole(key) ? this.keys.sealer.seal(body, objectAad(key)) : body, options);
  }
}

/** The keys of a store that was unlocked (unlock.ts), or undefined for a plain one. */
export function storeKeys(store: ObjectStore): RepoKeys | undefined {
  // Through wrappers (a counting store, a fault injector) to the sealed store they wrap.
  let at: ObjectStore = store;
  while (!(at instanceof SealedStore) && at instanceof DelegatingStore) at = at.wrapped;
  return at instanceof SealedStore ? at.keys : undefined;
}

