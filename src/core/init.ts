// init: create a repository for one volume of a given size (or the size of a source).

import { CdpError, UsageError, throwIfAborted } from '../errors.js';
import { type RepoConfig, newConfig } from '../repo/config.js';
import { type KdfParams } from '../repo/key-files.js';
import { CONFIG_KEY } from '../repo/keys.js';
import type { Compression } from '../repo/pieces.js';
import { createKeys } from '../repo/unlock.js';
import { Repository } from '../repo/repository.js';
import { RetainingStore, storeObjectLock } from '../repo/retaining-store.js';
import type { ObjectStore } from '../store/types.js';
import { openVolume } from '../volume/source.js';

export interface InitOptions {
  store: ObjectStore;
  /** Volume size in bytes; give this or `from`. */
  size?: number;
  /** An image file or block device whose size becomes the volume's. */
  from?: string;
  /** Power of two from 64 KiB to 16 MiB. Default 1 MiB. */
  regionSize?: number;
  packSize?: number;
  /** Bytes in a block, the unit writes are shipped in (a power of two from 512 to the region size). Default 4 KiB. */
  blockSize?: number;
  /** Runs merged into a span of the next level (default 16; tests use small ones). */
  spanFanout?: number;
  /**
   * The password of the repository's first key: the repository is encrypted (docs/FORMAT.md,
   * "Encryption"). Without it, a plain repository (the CLI asks for one unless told
   * --insecure-no-encryption).
   */
  password?: string;
  /** scrypt parameters of the first key (tests use cheap ones); default key-files.ts DEFAULT_KDF. */
  kdf?: KdfParams;
  /** How writers compress by default (default `fast`). */
  compression?: Compression;
  /**
   * S3 Object Lock: every object the history needs is put under this retention (the bucket must
   * have been created with Object Lock enabled; docs/FORMAT.md, "Object Lock").
   */
  objectLock?: { mode: string; days: number };
  signal?: AbortSignal;
}

export interface InitResult {
  config: RepoConfig;
  /** The store to use the new repository through (sealed when it is encrypted). */
  store: ObjectStore;
  /** The first key's id, when encrypted. */
  keyId?: string;
}

export async function init(options: InitOptions): Promise<InitResult> {
  throwIfAborted(options.signal);
  if ((options.size === undefined) === (options.from === undefined)) {
    throw new UsageError('give the volume size with --size BYTES or a disk to take it from with --from SOURCE (one of the two)');
  }
  let size = options.size;
  if (options.from !== undefined) {
    const volume = await openVolume(options.from, 'read');
    size = volume.size;
    await volume.handle.close();
    if (size === 0) throw new CdpError('SOURCE', `${options.from} is empty; a volume needs at least one byte`);
  }
  let config: RepoConfig;
  try {
    config = newConfig({
      volumeSize: size!,
      regionSize: options.regionSize,
      packSize: options.packSize,
      spanFanout: options.spanFanout,
      blockSize: options.blockSize,
      encryption: options.password === undefined ? 'none' : 'aes-256-gcm',
      compression: options.compression,
      objectLock: options.objectLock,
    });
  } catch (error) {
    throw new UsageError((error as Error).message, { cause: error });
  }
  let store = options.store;
  if (config.objectLock !== undefined) {
    const state = await store.objectLock({ signal: options.signal });
    if (!state.enabled) {
      throw new CdpError(
        'NO_OBJECT_LOCK',
        `cannot use --object-lock: ${state.why}; use a bucket created with Object Lock enabled (e.g. aws s3api create-bucket --object-lock-enabled-for-bucket), or leave out --object-lock`,
      );
    }
    if (state.defaultRetention !== undefined) {
      throw new CdpError(
        'NO_OBJECT_LOCK',
        `cannot use --object-lock: bucket ${store.location} has a default retention (${state.defaultRetention}), which would also lock the objects cdp-s3 rewrites and deletes (locks, status); remove the bucket's default retention rule (cdp-s3 sets a retention on each object itself)`,
      );
    }
    // A store already retaining (tests: one with its own clock) is used as it is.
    if (storeObjectLock(store) === undefined) store = new RetainingStore(store, config.objectLock);
  }
  if (options.password === undefined) {
    await Repository.init(store, config, options.signal);
    return { config, store };
  }
  if (options.password === '') throw new UsageError('the password is empty: choose one with at least one character');
  // Refused before a key is written: a key file beside someone else's config would be litter.
  if ((await store.head(CONFIG_KEY, { signal: options.signal })) !== undefined) {
    throw new CdpError('REPO_EXISTS', `${store.location} already holds a repository; use it as it is, or choose another --repo`);
  }
  const sealed = await createKeys(store, options.password, { kdf: options.kdf, signal: options.signal });
  await Repository.init(sealed, config, options.signal);
  return { config, store: sealed, keyId: sealed.keyId };
}
