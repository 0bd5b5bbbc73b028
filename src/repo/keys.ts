// Object keys inside a repository prefix. Sequence numbers are zero-padded to 16 digits so a
// LIST (ascending byte order) returns deltas and spans in chain order, which is time order.

export const CONFIG_KEY = 'config';
export const DELTA_PREFIX = 'deltas/';
export const SPAN_PREFIX = 'spans/';
export const PACK_PREFIX = 'packs/';
export const PAGE_PACK_PREFIX = 'pages/';
/** One object per writer holding (or taking) the repository lock: `locks/<id>` (src/repo/lock.ts). */
export const LOCK_PREFIX = 'locks/';

const SEQ_DIGITS = 16;

export function seqName(seq: number): string {
  return String(seq).padStart(SEQ_DIGITS, '0');
}

export function deltaKey(seq: number, generation = 0): string {
  return `${DELTA_PREFIX}${seqName(seq)}${generationSuffix(generation)}`;
}

/** Compaction records: `compactions/<generation, 8 digits>` (src/core/compact.ts). */
export const COMPACTION_PREFIX = 'compactions/';
const GENERATION_DIGITS = 8;

export function generationName(generation: number): string {
  return String(generation).padStart(GENERATION_DIGITS, '0');
}

/** A run rewritten by compaction `g` is stored at its key plus `.<g, 8 digits>`; generation 0 has no suffix. */
function generationSuffix(generation: number): string {
  return generation === 0 ? '' : `.${generationName(generation)}`;
}

/** The seq (`last`) and generation in a run key `<prefix><16 digits>[.<8 digits>]`, or undefined for any other key. */
export function parseRunKey(key: string, prefix: string): { last: number; generation: number } | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const match = /^(\d{16})(?:\.(\d{8}))?$/.exec(key.slice(prefix.length));
  if (match === null) return undefined;
  const generation = match[2] === undefined ? 0 : Number(match[2]);
  if (match[2] !== undefined && generation === 0) return undefined; // generation 0 is the bare key
  return { last: Number(match[1]), generation };
}

/** `spans/<level, 2 digits>/` */
export function spanLevelPrefix(level: number): string {
  return `${SPAN_PREFIX}${String(level).padStart(2, '0')}/`;
}

/** The span of `level` whose last point in time is `last`: `spans/<level>/<last>`. */
export function spanKey(level: number, last: number, generation = 0): string {
  return `${spanLevelPrefix(level)}${seqName(last)}${generationSuffix(generation)}`;
}

/** Packs are named by the delta that wrote them plus a random part, so a retried backup never reuses a name. */
export function packKey(seq: number, random: string): string {
  return `${PACK_PREFIX}${seqName(seq)}-${random}`;
}

/** Page packs are named by the run (its last seq) that wrote them plus a random part. */
export function pagePackKey(seq: number, random: string): string {
  return `${PAGE_PACK_PREFIX}${seqName(seq)}-${random}`;
}

const PACK_KEY = /^packs\/\d{16}-[0-9a-f]{8}$/;
const PAGE_PACK_KEY = /^pages\/\d{16}-[0-9a-f]{8}$/;

/**
 * True if `key` is a pack key as writers make them (`packs/<16-digit seq>-<8 lowercase hex>`).
 * Pack keys are read from pages, which could be crafted: only this form is fetched, so a
 * stored object can never name one outside the repository's prefix.
 */
export function isPackKey(key: string): boolean {
  return PACK_KEY.test(key);
}

export function isPagePackKey(key: string): boolean {
  return PAGE_PACK_KEY.test(key);
}

/** The sequence number in a `packs/` or `pages/` key (the run that wrote it). */
export function seqOfPackKey(key: string): number {
  return Number(key.slice(key.indexOf('/') + 1, key.indexOf('/') + 1 + SEQ_DIGITS));
}

/** The sequence number in a key `<prefix><16 digits>`, or undefined for any other key. */
export function seqOfKey(key: string, prefix: string): number | undefined {
  if (!key.startsWith(prefix)) return undefined;
  const name = key.slice(prefix.length);
  return /^\d{16}$/.test(name) ? Number(name) : undefined;
}
