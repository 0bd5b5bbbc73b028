// key list | add | remove | passwd: the key files that open an encrypted repository. Each wraps
// the same master key under its own password; changing a password writes a new key file first,
// then removes the old one, so a crash between the two leaves both (never neither).

import { CdpError } from '../errors.js';
import { type KdfParams, type KeyFile, encodeKeyFile, keyFileKey, listKeyFiles, newKeyFile } from '../repo/key-files.js';
import { UnlockedStore } from '../repo/unlock.js';
import { storeObjectLock } from '../repo/retaining-store.js';
import type { ObjectStore } from '../store/types.js';

export interface KeyInfo {
  id: string;
  created: number | undefined;
  host: string | undefined;
  /** The key this command's password opened. */
  current: boolean;
  /** Why the key file cannot be read, if it cannot. */
  error?: string;
}

function unlocked(store: ObjectStore): UnlockedStore {
  if (!(store instanceof UnlockedStore)) throw new CdpError('KEY', `${store.location} is not encrypted: it has no keys`);
  return store;
}

export async function listKeys(store: ObjectStore, signal?: AbortSignal): Promise<KeyInfo[]> {
  const open = unlocked(store);
  return (await listKeyFiles(open.plain, signal)).map((key) =>
    'error' in key
      ? { id: key.id, created: undefined, host: undefined, current: false, error: key.error.message }
      : { id: key.id, created: key.created, host: key.host, current: key.id === open.keyId },
  );
}

/** A new key file opening the repository with `password`. */
export async function addKey(store: ObjectStore, password: string, options: { kdf?: KdfParams; signal?: AbortSignal } = {}): Promise<KeyFile> {
  const open = unlocked(store);
  const key = await newKeyFile(open.master, password, options);
  await open.plain.put(keyFileKey(key.id), encodeKeyFile(key), { ifAbsent: true, signal: options.signal });
  return key;
}

/**
 * Removes key `id`: never the key in use (the repository must stay openable by someone who just
 * proved it), never the last one. Returns until when its bytes stay in the bucket anyway, when
 * it is under Object Lock (the delete only hides it: docs/FORMAT.md, "Object Lock").
 */
export async function removeKey(store: ObjectStore, id: string, signal?: AbortSignal): Promise<{ retainedUntil: number | undefined }> {
  const open = unlocked(store);
  const keys = await listKeyFiles(open.plain, signal);
  if (!keys.some((key) => key.id === id)) throw new CdpError('KEY', `no key ${id} in ${store.location} (see cdp-s3 key list)`);
  if (id === open.keyId) throw new CdpError('KEY', `key ${id} is the one this password opens: remove it with another key's password, or change its password with cdp-s3 key passwd`);
  if (keys.filter((key) => !('error' in key) && key.id !== id).length === 0) throw new CdpError('KEY', `key ${id} is the last readable key of ${store.location}: removing it would lock everyone out`);
  return deleteKeyFile(open.plain, id, signal);
}

/** Changes the current key's password: a new key file, then the old one removed (see removeKey for `oldRetainedUntil`). */
export async function changePassword(
  store: ObjectStore,
  password: string,
  options: { kdf?: KdfParams; signal?: AbortSignal } = {},
): Promise<{ key: KeyFile; oldRetainedUntil: number | undefined }> {
  const open = unlocked(store);
  const key = await addKey(open, password, options);
  const { retainedUntil } = await deleteKeyFile(open.plain, open.keyId, options.signal);
  return { key, oldRetainedUntil: retainedUntil };
}

async function deleteKeyFile(plain: ObjectStore, id: string, signal?: AbortSignal): Promise<{ retainedUntil: number | undefined }> {
  const io = signal === undefined ? {} : { signal };
  // Under Object Lock the delete puts a marker in front of the key file; its version stays.
  const until = storeObjectLock(plain) === undefined ? undefined : (await plain.head(keyFileKey(id), io))?.retention?.until;
  await plain.delete(keyFileKey(id), io);
  return { retainedUntil: until !== undefined && until > Date.now() ? until : undefined };
}
