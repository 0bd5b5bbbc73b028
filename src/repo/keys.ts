// Object keys inside a repository prefix. Sequence numbers are zero-padded to 16 digits so a
// LIST (ascending byte order) returns deltas and checkpoints in chain order, which is time order.

export const CONFIG_KEY = 'config';
export const DELTA_PREFIX = 'deltas/';
export const CHECKPOINT_PREFIX = 'checkpoints/';
export const PACK_PREFIX = 'packs/';
/** One object per writer holding (or taking) the repository lock: `locks/<id>` (src/repo/lock.ts). */
export const LOCK_PREFIX = 'locks/';

const SEQ_DIGITS = 16;

export function seqName(seq: number): string {
  return String(seq).padStart(SEQ_DIGITS, '0');
}

export function deltaKey(seq: number): string {
  return `${DELTA_PREFIX}${seqName(seq)}`;
}

export function checkpointKey(seq: number): string {
  return `${CHECKPOINT_PREFIX}${seqName(seq)}`;
}

/** Packs are named by the delta that wrote them plus a random part, so a retried backup never reuses a name. */
export function packKey(seq: number, random: string): string {
  return `${PACK_PREFIX}${seqName(seq)}-${random}`;
}

const PACK_KEY = /^packs\/\d{16}-[0-9a-f]{8}$/;

/**
 * True if `key` is a pack key as writers make them (`packs/<16-digit seq>-<8 lowercase hex>`).
 * Pack keys are read from deltas and checkpoints, which could be crafted: only this form is
 * fetched, so a stored object can never name one outside the repository's prefix.
 */
export function isPackKey(key: string): boolean {
  return PACK_KEY.test(key);
}

/** The sequence number in a deltas/ or checkpoints/ key, or undefined for any other key. */
export function seqOfKey(key: string, prefix: string): number | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const name = key.slice(prefix.length);
  return /^\d{16}$/.test(name) ? Number(name) : undefined;
}
