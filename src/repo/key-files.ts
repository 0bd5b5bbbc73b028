// Key files (`keys/<id>`): the repository's master key, wrapped under a key derived from one
// password with scrypt. Several per repository (one per person or machine); any one opens it.
// They are the only objects besides the config's header a reader sees before it has a key.

import { randomBytes, scrypt } from 'node:crypto';
import { hostname } from 'node:os';
import { CdpError, FormatError } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import { MASTER_KEY_BYTES, Sealer } from './crypto.js';
import { FORMAT_VERSION, FieldReader, openEnvelope, sealEnvelope } from './envelope.js';

export const KEY_PREFIX = 'keys/';

/**
 * scrypt parameters for new keys: N = 2^17, r = 8 (128 MiB of memory, about 0.5 s on a 2-core
 * VM): what a password guess costs an attacker holding the bucket. Readers take what a key file says.
 */
export const DEFAULT_KDF = { n: 2 ** 17, r: 8, p: 1 } as const;
export type KdfParams = { n: number; r: number; p: number };
/** Most key files an unlock tries (each costs a key derivation). */
const MAX_KEYS_TRIED = 32;

export interface KeyFile {
  id: string;
  created: number;
  host: string;
  kdf: KdfParams;
  salt: Uint8Array;
  /** The master key, sealed under the password's key (associated data: the key's id). */
  wrapped: Uint8Array;
}

const keyKind = (id: string) => ({ magic: 'CDPS3KEY', version: FORMAT_VERSION, what: `key ${id}` });

export function keyFileKey(id: string): string {
  return `${KEY_PREFIX}${id}`;
}

function wrapAad(id: string): Uint8Array {
  return Buffer.from(`cdp-s3 key ${id}`, 'utf8');
}

/** The key a password gives under `kdf` and `salt` (maxmem: scrypt needs 128 · N · r bytes). */
export function passwordKey(password: string, salt: Uint8Array, kdf: KdfParams): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    scrypt(password.normalize('NFC'), salt, 32, { N: kdf.n, r: kdf.r, p: kdf.p, maxmem: 256 * kdf.n * kdf.r }, (error, key) => (error === null ? resolve(new Uint8Array(key)) : reject(error)));
  });
}

export async function newKeyFile(master: Uint8Array, password: string, options: { kdf?: KdfParams; now?: number } = {}): Promise<KeyFile> {
  const id = randomBytes(8).toString('hex');
  const kdf = options.kdf ?? DEFAULT_KDF;
  const salt = randomBytes(32);
  const wrapped = new Sealer(await passwordKey(password, salt, kdf)).seal(master, wrapAad(id));
  return { id, created: options.now ?? Date.now(), host: hostname(), kdf, salt, wrapped };
}

export function encodeKeyFile(key: KeyFile): Uint8Array {
  return sealEnvelope(keyKind(key.id), { id: key.id, created: key.created, host: key.host, kdf: 'scrypt', n: key.kdf.n, r: key.kdf.r, p: key.kdf.p, salt: key.salt, wrapped: key.wrapped });
}

export function decodeKeyFile(bytes: Uint8Array, id: string): KeyFile {
  const kind = keyKind(id);
  const r = new FieldReader(kind.what, openEnvelope(kind, bytes));
  if (r.string('id') !== id) throw new FormatError('FORMAT_CORRUPT', kind.what, `says it is key ${r.string('id')}`);
  r.oneOf('kdf', ['scrypt'] as const);
  // Bounds keep a tampered key file from asking for unbounded memory or time.
  const kdf = { n: r.integer('n', 2 ** 10, 2 ** 22), r: r.integer('r', 1, 32), p: r.integer('p', 1, 16) };
  if ((kdf.n & (kdf.n - 1)) !== 0) throw new FormatError('FORMAT_CORRUPT', kind.what, 'its scrypt N is not a power of two');
  return { id, created: r.integer('created'), host: r.string('host'), kdf, salt: r.bytes('salt', 32), wrapped: r.bytes('wrapped', MASTER_KEY_BYTES + 28) };
}

/** The master key `password` unwraps from `key`, or undefined if it is not that key's password. */
export async function unwrapKey(key: KeyFile, password: string): Promise<Uint8Array | undefined> {
  try {
    return new Sealer(await passwordKey(password, key.salt, key.kdf)).open(key.wrapped, wrapAad(key.id), `key ${key.id}`);
  } catch (error) {
    if (error instanceof FormatError) return undefined;
    throw error;
  }
}

/** Every key file of the repository (one that cannot be read is reported by id, not skipped silently). */
export async function listKeyFiles(store: ObjectStore, signal?: AbortSignal): Promise<Array<KeyFile | { id: string; error: Error }>> {
  const out: Array<KeyFile | { id: string; error: Error }> = [];
  for await (const info of store.list(KEY_PREFIX, { signal })) {
    const id = info.key.slice(KEY_PREFIX.length);
    try {
      out.push(decodeKeyFile(await store.get(info.key, { signal }), id));
    } catch (error) {
      if (!(error instanceof FormatError)) throw error;
      out.push({ id, error });
    }
  }
  return out;
}

/**
 * The master key and the key file `password` opens (and whose master key `fits`: opens the
 * config); PASSWORD if it opens none, KEY if there is none.
 */
export async function openMasterKey(store: ObjectStore, password: string, fits: (master: Uint8Array) => boolean, signal?: AbortSignal): Promise<{ master: Uint8Array; key: KeyFile }> {
  const keys = (await listKeyFiles(store, signal)).filter((k): k is KeyFile => !('error' in k));
  if (keys.length === 0) {
    throw new CdpError('KEY', `${store.location} is encrypted but holds no readable key (keys/): nothing can open it; restore a keys/ object from a copy`);
  }
  for (const key of keys.slice(0, MAX_KEYS_TRIED)) {
    const master = await unwrapKey(key, password);
    if (master !== undefined && fits(master)) return { master, key };
  }
  throw new CdpError('PASSWORD', `the password opens none of the ${keys.length} key${keys.length === 1 ? '' : 's'} of ${store.location}: check CDP_S3_PASSWORD or --password-file`);
}
