// key list | add | remove | passwd: the key files that open an encrypted repository. Each wraps
// the same master key under its own password; changing a password writes a new key file first,
// then removes the old one, so a crash between the two leaves both (never neither).

import { CdpError } from '../errors.js';
import { type KdfParams, type KeyFile, encodeKeyFile, keyFileKey, listKeyFiles, newKeyFile } from '../repo/key-files.js';
import { UnlockedStore } from '../repo/unlock.js';
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

/** Removes key `id`: never the key in use (the repository must stay openable by someone who just proved it), never the last one. */
export async function removeKey(store: ObjectStore, id: string, signal?: AbortSignal): Promise<void> {
  const open = unlocked(store);
  const keys = await listKeyFiles(open.plain, signal);
  if (!keys.some((key) => key.id === id)) throw new CdpError('KEY', `no key ${id} in ${store.location} (see cdp-s3 key list)`);
  if (id === open.keyId) throw new CdpError('KEY', `key ${id} is the one this password opens: remove it with another key's password, or change its password with cdp-s3 key passwd`);
  if (keys.filter((key) => !('error' in key) && key.id !== id).length === 0) throw new CdpError('KEY', `key ${id} is the last readable key of ${store.location}: removing it would lock everyone out`);
  await open.plain.delete(keyFileKey(id), { signal });
}

/** Changes the current key's password: a new key file, then the old one removed. */
export async function changePassword(store: ObjectStore, password: string, options: { kdf?: KdfParams; signal?: AbortSignal } = {}): Promise<KeyFile> {
  const open = unlocked(store);
  const key = await addKey(open, password, options);
  await open.plain.delete(keyFileKey(open.keyId), { signal: options.signal });
  return key;
}
