// Opening an encrypted repository: its config says it is encrypted, a password opens one of its
// key files, and the store comes back sealed (sealed-store.ts); a plain repository's store comes
// back as it is. Creating one: a random master key, its first key file, then the config.

import { randomBytes } from 'node:crypto';
import { CdpError, FormatError, StoreError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import { MASTER_KEY_BYTES, repoKeys } from './crypto.js';
import { configEncryption, configObjectLock, decodeConfig } from './config.js';
import { KEY_PREFIX, encodeKeyFile, keyFileKey, newKeyFile, openMasterKey, type KdfParams } from './key-files.js';
import { CONFIG_KEY } from './keys.js';
import { RetainingStore, storeObjectLock } from './retaining-store.js';
import { SealedStore, storeKeys } from './sealed-store.js';

/** Where a password comes from: called at most once, and only for an encrypted repository. */
export type PasswordSource = () => Promise<string | undefined>;

export const NO_PASSWORD_HINT = 'set CDP_S3_PASSWORD, pass --password-file FILE, or run on a terminal to be asked';

export class UnlockedStore extends SealedStore {
  constructor(
    inner: ObjectStore,
    /** The master key (key add wraps it under another password). */
    readonly master: Uint8Array,
    /** The key file the password opened. */
    readonly keyId: string,
  ) {
    super(inner, repoKeys(master));
  }
}

/**
 * The store to use for the repository at `store`: retaining what it puts if the repository has
 * Object Lock (retaining-store.ts), and sealed if it is encrypted (asking for the password then).
 */
export async function unlockStore(given: ObjectStore, password: PasswordSource | undefined, signal?: AbortSignal): Promise<ObjectStore> {
  if (storeKeys(given) !== undefined) return given;
  let config: Uint8Array;
  try {
    config = await given.get(CONFIG_KEY, { signal });
  } catch (error) {
    if (error instanceof StoreError && error.kind === 'not-found') return given; // Repository.open says so
    throw error;
  }
  const objectLock = configObjectLock(config);
  // Beneath the sealing, so that key files (put through the plain store) are retained too.
  const store = objectLock === undefined || storeObjectLock(given) !== undefined ? given : new RetainingStore(given, objectLock);
  return unlockConfig(store, config, password, signal);
}

async function unlockConfig(store: ObjectStore, config: Uint8Array, password: PasswordSource | undefined, signal?: AbortSignal): Promise<ObjectStore> {
  if (configEncryption(config) === 'none') return store;
  const typed = await password?.();
  if (typed === undefined) throw new CdpError('PASSWORD', `${store.location} is encrypted and no password was given: ${NO_PASSWORD_HINT}`);
  // A key file of another master key (a stray one) opens with the password but not the config.
  const fits = (master: Uint8Array): boolean => {
    try {
      decodeConfig(config, repoKeys(master));
      return true;
    } catch (error) {
      if (error instanceof FormatError) return false;
      throw error;
    }
  };
  const { master, key } = await openMasterKey(store, typed, fits, signal);
  return new UnlockedStore(store, master, key.id);
}

/**
 * A new master key with its first key file stored; the store to init the repository through.
 * Key files already there without a config are an unfinished init's (interrupted between its
 * key and its config): they open nothing, and are removed first.
 */
export async function createKeys(store: ObjectStore, password: string, options: { kdf?: KdfParams; signal?: AbortSignal } = {}): Promise<UnlockedStore> {
  const stray: string[] = [];
  for await (const info of store.list(KEY_PREFIX, { signal: options.signal })) stray.push(info.key);
  for (const key of stray) await store.delete(key, { signal: options.signal });
  const master = randomBytes(MASTER_KEY_BYTES);
  const key = await newKeyFile(master, password, options);
  await store.put(keyFileKey(key.id), encodeKeyFile(key), { ifAbsent: true, signal: options.signal });
  return new UnlockedStore(store, master, key.id);
}
