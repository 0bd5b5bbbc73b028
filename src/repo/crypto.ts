// The repository's cryptography (docs/FORMAT.md, "Encryption"): a random master key, the keys
// derived from it, and authenticated encryption of objects, blobs and pieces. node:crypto only:
// AES-256-GCM, HKDF-SHA256, HMAC-SHA256, scrypt.

import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes } from 'node:crypto';
import { FormatError } from '../errors.js';

export const MASTER_KEY_BYTES = 32;
export const NONCE_BYTES = 12;
export const TAG_BYTES = 16;
export const ENCRYPTION_SCHEMES = ['none', 'aes-256-gcm'] as const;
export type EncryptionScheme = (typeof ENCRYPTION_SCHEMES)[number];

/** AES-256-GCM with a fresh random nonce per message: nonce || ciphertext || tag. */
export class Sealer {
  readonly overhead = NONCE_BYTES + TAG_BYTES;

  constructor(private readonly key: Uint8Array) {
    if (key.length !== 32) throw new Error('an AES-256 key is 32 bytes');
  }

  /** `nonce` is for known-answer tests only: a writer never passes one. */
  seal(plain: Uint8Array, aad: Uint8Array, nonce: Uint8Array = randomBytes(NONCE_BYTES)): Uint8Array {
    const cipher = createCipheriv('aes-256-gcm', this.key, nonce);
    cipher.setAAD(aad);
    const out = new Uint8Array(NONCE_BYTES + plain.length + TAG_BYTES);
    out.set(nonce, 0);
    const body = cipher.update(plain);
    out.set(body, NONCE_BYTES);
    const tail = cipher.final(); // empty for GCM
    out.set(tail, NONCE_BYTES + body.length);
    out.set(cipher.getAuthTag(), NONCE_BYTES + plain.length);
    return out;
  }

  /** The plaintext; FORMAT_CORRUPT naming `what` if the bytes were changed, swapped or sealed under another key. */
  open(sealed: Uint8Array, aad: Uint8Array, what: string): Uint8Array {
    if (sealed.length < NONCE_BYTES + TAG_BYTES) throw new FormatError('FORMAT_BAD_LENGTH', what, `only ${sealed.length} bytes: too short to be sealed`);
    const decipher = createDecipheriv('aes-256-gcm', this.key, sealed.subarray(0, NONCE_BYTES));
    decipher.setAAD(aad);
    decipher.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
    const body = decipher.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES));
    try {
      const tail = decipher.final();
      return tail.length === 0 ? body : Buffer.concat([body, tail]);
    } catch (error) {
      throw new FormatError('FORMAT_CORRUPT', what, 'does not authenticate: it was changed, moved from another object, or sealed under another key', { cause: error });
    }
  }
}

/** What a repository's master key gives: the sealer of everything, and the keys of identities and names. */
export interface RepoKeys {
  sealer: Sealer;
  /** HMAC-SHA256 key of region identities (what runs store instead of a region's plain SHA-256). */
  identity: Uint8Array;
  /** HMAC-SHA256 key of object names that would otherwise say something (status/). */
  names: Uint8Array;
}

function derive(master: Uint8Array, info: string): Uint8Array {
  return new Uint8Array(hkdfSync('sha256', master, new Uint8Array(0), `cdp-s3 ${info}`, 32));
}

export function repoKeys(master: Uint8Array): RepoKeys {
  if (master.length !== MASTER_KEY_BYTES) throw new Error(`a master key is ${MASTER_KEY_BYTES} bytes`);
  return { sealer: new Sealer(derive(master, 'data')), identity: derive(master, 'identity'), names: derive(master, 'names') };
}

/** A short keyed name for `text` (hex), so an object's name says nothing about it. */
export function keyedName(keys: RepoKeys, text: string): string {
  return createHmac('sha256', keys.names).update(text).digest('hex').slice(0, 24);
}
