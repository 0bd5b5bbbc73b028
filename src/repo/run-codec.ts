// Codecs for the chain's objects (docs/FORMAT.md): pages, point summaries, and the roots of
// runs (deltas/<seq> and spans/<level>/<last>). A run's root lists its pages; each page is a
// blob stored inline in the root or in a page pack (pages/<seq>-<random>), named by a ref with
// its SHA-256. Every blob is itself an envelope, so a page read on its own is checked too.

import { FormatError } from '../errors.js';
import { DELTA_KINDS, type DeltaKind, DIGEST_BYTES, ZERO_REGION } from '../model/regions.js';
import { MAX_ENTRY_PATCHES, type PagePatches, type RunPage, ZERO_PACK } from '../model/pages.js';
import { PATCH_DIGEST_BYTES } from '../model/patches.js';
import { u16Bytes, u16Column, u32Bytes, u32Column, u64Bytes, u64Column } from './columns.js';
import { FORMAT_VERSION, FieldReader, openEnvelope, sealEnvelope } from './envelope.js';
import { isPackKey, isPagePackKey, seqName } from './keys.js';
import { FirstUseTable } from '../util/first-use-table.js';

export const DELTA_MAGIC = 'CDPS3DLT';
export const SPAN_MAGIC = 'CDPS3SPN';
export const PAGE_MAGIC = 'CDPS3PAG';
export const SUMMARY_MAGIC = 'CDPS3SUM';
export const PAGE_PACK_MAGIC = 'CDPS3PGS';
export const PAGE_PACK_HEADER_BYTES = 16;
/** Points whose summaries one summary blob holds. */
export const SUMMARIES_PER_BLOB = 4096;
/** Spans of at most this many points keep their summaries inline in the root. */
export const INLINE_SUMMARIES = 256;

const deltaKind = (seq: number) => ({ magic: DELTA_MAGIC, version: FORMAT_VERSION, what: `delta ${seqName(seq)}` });
const spanKind = (level: number, last: number) => ({ magic: SPAN_MAGIC, version: FORMAT_VERSION, what: `span ${level}/${seqName(last)}` });
const pageKind = (what: string) => ({ magic: PAGE_MAGIC, version: FORMAT_VERSION, what });
const summaryKind = (what: string) => ({ magic: SUMMARY_MAGIC, version: FORMAT_VERSION, what });

/** A blob in a page pack: a page or a block of summaries, with its SHA-256. */
export interface BlobRef {
  pack: string;
  offset: number;
  length: number;
  digest: Uint8Array;
}

/** One page of a run: stored in a page pack (`ref`), or decoded already (a run stored inline). */
export interface PageRef {
  page: number;
  /** Entries in the page. */
  count: number;
  ref: BlobRef | undefined;
  inline: RunPage | undefined;
}

/** What one point in time is, without its map: what `log` shows and choosing a time needs. */
export interface PointSummary {
  seq: number;
  /** `removed`: a point a compaction folded away (its times and counts are 0; nothing reads them). */
  kind: DeltaKind | 'removed';
  start: number;
  end: number;
  /** Regions its delta changed. */
  count: number;
  storedBytes: number;
}

export interface DeltaInfo {
  kind: DeltaKind;
  start: number;
  end: number;
  storedBytes: number;
  source: { host: string; path: string } | undefined;
}

/** A run's root, decoded: a delta (level 0, one point) or a span (level ≥ 1, many). */
export interface RunRoot {
  level: number;
  first: number;
  last: number;
  /** Entries in all its pages. */
  count: number;
  /** When its last point in time was taken (ms since the epoch). */
  end: number;
  /** Ascending by page; only pages with entries. */
  pages: PageRef[];
  /**
   * The run holds the changes of points `from + 1 … to`, as of point `to` (docs/FORMAT.md,
   * "Compaction"): `first - 1` and `last` unless a compaction folded forgotten points in or out.
   */
  from: number;
  to: number;
  /** Level 0 only. */
  delta: DeltaInfo | undefined;
  /** Level ≥ 1: the summaries of points first … last, inline (short spans) … */
  summaries: PointSummary[] | undefined;
  /** … or in blobs of SUMMARIES_PER_BLOB points each. */
  summaryBlobs: BlobRef[];
}

// ---- blob tables ---------------------------------------------------------------------------

function encodeBlobTable(blobs: readonly BlobRef[]): Record<string, unknown> {
  const packs = new FirstUseTable<string>();
  const where = new Uint32Array(blobs.length);
  const offsets = new Uint32Array(blobs.length);
  const lengths = new Uint32Array(blobs.length);
  const digests = new Uint8Array(blobs.length * DIGEST_BYTES);
  blobs.forEach((blob, i) => {
    where[i] = packs.indexOf(blob.pack);
    offsets[i] = blob.offset;
    lengths[i] = blob.length;
    digests.set(blob.digest, i * DIGEST_BYTES);
  });
  return { packs: packs.values, where: u32Bytes(where), offsets: u32Bytes(offsets), lengths: u32Bytes(lengths), digests };
}

function decodeBlobTable(body: unknown, what: string, field: string): BlobRef[] {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new FormatError('FORMAT_CORRUPT', what, `field "${field}" is not a map`);
  const r = new FieldReader(`${what} ${field}`, body as Record<string, unknown>);
  const where = u32Column(r.bytes('where'), what, `${field}.where`);
  const n = where.length;
  const offsets = u32Column(r.bytes('offsets', n * 4), what, `${field}.offsets`);
  const lengths = u32Column(r.bytes('lengths', n * 4), what, `${field}.lengths`);
  const digests = r.bytes('digests', n * DIGEST_BYTES);
  const packs = r.strings('packs');
  for (const pack of packs) {
    if (!isPagePackKey(pack)) {
      throw new FormatError('FORMAT_CORRUPT', what, `names page pack ${JSON.stringify(pack.slice(0, 80))}, which is not a page pack key (pages/<16-digit seq>-<8 hex digits>)`);
    }
  }
  const out: BlobRef[] = [];
  for (let i = 0; i < n; i++) {
    const pack = packs[where[i]!];
    if (pack === undefined) throw new FormatError('FORMAT_CORRUPT', what, `blob ${i} of "${field}" names page pack ${where[i]} of ${packs.length}`);
    if (offsets[i]! < PAGE_PACK_HEADER_BYTES) throw new FormatError('FORMAT_CORRUPT', what, `blob ${i} of "${field}" starts inside the page pack header`);
    out.push({ pack, offset: offsets[i]!, length: lengths[i]!, digest: digests.slice(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES) });
  }
  return out;
}

// ---- pages ---------------------------------------------------------------------------------

export interface PageContext {
  volumeId: string;
  pageRegions: number;
  regionCount: number;
}

export function encodePage(page: RunPage, volumeId: string, pageRegions: number): Uint8Array {
  const first = page.page * pageRegions;
  const offsets = new Uint16Array(page.regions.length);
  for (let i = 0; i < offsets.length; i++) offsets[i] = page.regions[i]! - first;
  return sealEnvelope(pageKind(`page ${page.page}`), {
    volumeId,
    page: page.page,
    regions: u16Bytes(offsets),
    packs: page.packs,
    entryPack: u16Bytes(page.entryPack),
    entryOffset: u32Bytes(page.entryOffset),
    entryLength: u32Bytes(page.entryLength),
    digests: page.digests,
    ...(page.patches === undefined
      ? {}
      : {
          patches: {
            counts: page.patches.counts,
            pack: u16Bytes(page.patches.pack),
            offset: u32Bytes(page.patches.offset),
            length: u32Bytes(page.patches.length),
          },
        }),
  });
}

/**
 * Checks the patch columns of `n` entries naming `packCount` packs: counts, then every patch's
 * pack index (by `packIndex`, of whatever width), offset and length.
 */
function checkPatches(name: string, n: number, counts: Uint8Array, packIndex: ArrayLike<number>, packCount: number, lengths: Uint32Array): void {
  if (counts.length !== n) throw new FormatError('FORMAT_CORRUPT', name, `patch counts are ${counts.length} for ${n} entries`);
  let total = 0;
  for (const count of counts) {
    if (count > MAX_ENTRY_PATCHES) throw new FormatError('FORMAT_CORRUPT', name, `an entry has ${count} patches`);
    total += count;
  }
  if (total === 0) throw new FormatError('FORMAT_CORRUPT', name, 'has a patch table with no patches');
  if (packIndex.length !== total || lengths.length !== total) throw new FormatError('FORMAT_CORRUPT', name, `patch columns hold other than ${total} patches`);
  for (let j = 0; j < total; j++) {
    if (packIndex[j]! >= packCount) throw new FormatError('FORMAT_CORRUPT', name, `a patch names pack ${packIndex[j]} of ${packCount}`);
    if (lengths[j]! === 0) throw new FormatError('FORMAT_CORRUPT', name, 'a patch is 0 bytes long');
  }
}

/** A stored piece has a frame of at least one byte; zeros have none. */
function checkEntryLengths(name: string, entryPack: ArrayLike<number>, zero: number, entryLength: Uint32Array): void {
  for (let i = 0; i < entryLength.length; i++) {
    if ((entryPack[i] === zero) !== (entryLength[i] === 0)) throw new FormatError('FORMAT_CORRUPT', name, `entry ${i} has a stored length of ${entryLength[i]}`);
  }
}

function decodePagePatches(body: unknown, name: string, n: number, packCount: number): PagePatches {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new FormatError('FORMAT_CORRUPT', name, 'field "patches" is not a map');
  const r = new FieldReader(`${name} patches`, body as Record<string, unknown>);
  const counts = new Uint8Array(r.bytes('counts', n));
  const pack = u16Column(r.bytes('pack'), name, 'patches.pack');
  const offset = u32Column(r.bytes('offset', pack.length * 4), name, 'patches.offset');
  const length = u32Column(r.bytes('length', pack.length * 4), name, 'patches.length');
  checkPatches(name, n, counts, pack, packCount, length);
  return { counts, pack, offset, length };
}

/** Decodes and checks a page; `page` is the index its ref names, `what` the run it belongs to. */
export function decodePage(bytes: Uint8Array, page: number, context: PageContext, what: string): RunPage {
  const name = `${what} page ${page}`;
  const r = new FieldReader(name, openEnvelope(pageKind(name), bytes));
  if (r.string('volumeId') !== context.volumeId) throw new FormatError('FORMAT_CORRUPT', name, 'belongs to another volume');
  if (r.integer('page') !== page) throw new FormatError('FORMAT_CORRUPT', name, `holds page ${r.integer('page')}; its ref says ${page}`);
  const offsets = u16Column(r.bytes('regions'), name, 'regions');
  const n = offsets.length;
  const first = page * context.pageRegions;
  const regions = new Uint32Array(n);
  for (let i = 0; i < n; i++) {
    const region = first + offsets[i]!;
    if (offsets[i]! >= context.pageRegions || region >= context.regionCount) throw new FormatError('FORMAT_CORRUPT', name, `names region ${region}, outside the page or the volume`);
    if (i > 0 && offsets[i]! <= offsets[i - 1]!) throw new FormatError('FORMAT_CORRUPT', name, 'regions are not strictly ascending');
    regions[i] = region;
  }
  const packs = r.strings('packs');
  for (const key of packs) {
    if (!isPackKey(key)) {
      throw new FormatError('FORMAT_CORRUPT', name, `names pack ${JSON.stringify(key.length > 80 ? `${key.slice(0, 80)}…` : key)}, which is not a pack key (packs/<16-digit seq>-<8 hex digits>)`);
    }
  }
  const entryPack = u16Column(r.bytes('entryPack', n * 2), name, 'entryPack');
  for (const p of entryPack) if (p !== ZERO_PACK && p >= packs.length) throw new FormatError('FORMAT_CORRUPT', name, `an entry names pack ${p} of ${packs.length}`);
  const entryOffset = u32Column(r.bytes('entryOffset', n * 4), name, 'entryOffset');
  const entryLength = u32Column(r.bytes('entryLength', n * 4), name, 'entryLength');
  checkEntryLengths(name, entryPack, ZERO_PACK, entryLength);
  const digests = new Uint8Array(r.bytes('digests', n * DIGEST_BYTES));
  if (!r.has('patches')) return { page, regions, packs, entryPack, entryOffset, entryLength, digests };
  const patches = decodePagePatches(r.raw('patches'), name, n, packs.length);
  return { page, regions, packs, entryPack, entryOffset, entryLength, digests, patches };
}

// ---- summaries -----------------------------------------------------------------------------

const KIND_CODE: Record<PointSummary['kind'], number> = { base: 0, host: 1, fixup: 2, removed: 3 };
const REMOVED_CODE = 3;

/** The summary of a point a compaction folded away. */
export function removedSummary(seq: number): PointSummary {
  return { seq, kind: 'removed', start: 0, end: 0, count: 0, storedBytes: 0 };
}

function summaryColumns(summaries: readonly PointSummary[]): Record<string, unknown> {
  return {
    first: summaries[0]?.seq ?? 0,
    kinds: Uint8Array.from(summaries, (s) => KIND_CODE[s.kind]),
    starts: u64Bytes(summaries.map((s) => s.start)),
    ends: u64Bytes(summaries.map((s) => s.end)),
    counts: u32Bytes(Uint32Array.from(summaries, (s) => s.count)),
    stored: u64Bytes(summaries.map((s) => s.storedBytes)),
  };
}

function readSummaryColumns(body: unknown, first: number, count: number, name: string): PointSummary[] {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new FormatError('FORMAT_CORRUPT', name, 'summaries are not a map');
  const r = new FieldReader(name, body as Record<string, unknown>);
  if (r.integer('first') !== first) throw new FormatError('FORMAT_CORRUPT', name, `summaries start at ${r.integer('first')}, expected ${first}`);
  const kinds = r.bytes('kinds', count);
  const starts = u64Column(r.bytes('starts', count * 8), name, 'starts');
  const ends = u64Column(r.bytes('ends', count * 8), name, 'ends');
  const counts = u32Column(r.bytes('counts', count * 4), name, 'counts');
  const stored = u64Column(r.bytes('stored', count * 8), name, 'stored');
  const out: PointSummary[] = [];
  let previousEnd = -1; // of the last point not removed: ends grow strictly over those
  for (let i = 0; i < count; i++) {
    if (kinds[i] === REMOVED_CODE) {
      if (starts[i] !== 0 || ends[i] !== 0 || counts[i] !== 0 || stored[i] !== 0) throw new FormatError('FORMAT_CORRUPT', name, `point ${first + i} is removed but has times or counts`);
      out.push(removedSummary(first + i));
      continue;
    }
    const kind = DELTA_KINDS[kinds[i]!];
    if (kind === undefined) throw new FormatError('FORMAT_CORRUPT', name, `point ${first + i} has an unknown kind ${kinds[i]}`);
    if (ends[i]! < starts[i]!) throw new FormatError('FORMAT_CORRUPT', name, `point ${first + i} ends before it starts`);
    if (ends[i]! <= previousEnd) throw new FormatError('FORMAT_CORRUPT', name, `point ${first + i} does not end after the one before it`);
    previousEnd = ends[i]!;
    out.push({ seq: first + i, kind, start: starts[i]!, end: ends[i]!, count: counts[i]!, storedBytes: stored[i]! });
  }
  return out;
}

/** A blob of summaries (SUMMARIES_PER_BLOB points, fewer in a span's last blob). */
export function encodeSummaryBlob(summaries: readonly PointSummary[], volumeId: string): Uint8Array {
  return sealEnvelope(summaryKind(`summaries from ${summaries[0]?.seq ?? 0}`), { volumeId, ...summaryColumns(summaries) });
}

export function decodeSummaryBlob(bytes: Uint8Array, first: number, count: number, volumeId: string, what: string): PointSummary[] {
  const name = `${what} summaries from ${first}`;
  const body = openEnvelope(summaryKind(name), bytes);
  if (new FieldReader(name, body).string('volumeId') !== volumeId) throw new FormatError('FORMAT_CORRUPT', name, 'belongs to another volume');
  return readSummaryColumns(body, first, count, name);
}

// ---- entries of a run stored inline ----------------------------------------------------------

/** A small run's entries, all pages in one list (regions ascending), as in its root. */
function encodeEntries(pages: readonly RunPage[]): Record<string, unknown> {
  const n = pages.reduce((sum, p) => sum + p.regions.length, 0);
  const regions = new Uint32Array(n);
  const entryPack = new Uint32Array(n);
  const entryOffset = new Uint32Array(n);
  const entryLength = new Uint32Array(n);
  const digests = new Uint8Array(n * DIGEST_BYTES);
  const packs = new FirstUseTable<string>();
  const counts = new Uint8Array(n);
  const patchPack: number[] = [];
  const patchOffset: number[] = [];
  const patchLength: number[] = [];
  let at = 0;
  for (const page of pages) {
    const ids = page.packs.map((name) => packs.indexOf(name));
    regions.set(page.regions, at);
    for (let i = 0; i < page.regions.length; i++) {
      const pack = page.entryPack[i]!;
      entryPack[at + i] = pack === ZERO_PACK ? ZERO_REGION : ids[pack]!;
    }
    entryOffset.set(page.entryOffset, at);
    entryLength.set(page.entryLength, at);
    digests.set(page.digests, at * DIGEST_BYTES);
    if (page.patches !== undefined) {
      counts.set(page.patches.counts, at);
      for (let j = 0; j < page.patches.pack.length; j++) {
        patchPack.push(ids[page.patches.pack[j]!]!);
        patchOffset.push(page.patches.offset[j]!);
        patchLength.push(page.patches.length[j]!);
      }
    }
    at += page.regions.length;
  }
  const patches =
    patchPack.length === 0
      ? {}
      : { patches: { counts, pack: u32Bytes(Uint32Array.from(patchPack)), offset: u32Bytes(Uint32Array.from(patchOffset)), length: u32Bytes(Uint32Array.from(patchLength)) } };
  return { regions: u32Bytes(regions), packs: packs.values, entryPack: u32Bytes(entryPack), entryOffset: u32Bytes(entryOffset), entryLength: u32Bytes(entryLength), digests, ...patches };
}

function decodeEntries(body: unknown, what: string, context: RootContext): PageRef[] {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new FormatError('FORMAT_CORRUPT', what, 'field "entries" is not a map');
  const r = new FieldReader(what, body as Record<string, unknown>);
  const regions = u32Column(r.bytes('regions'), what, 'entries.regions');
  const n = regions.length;
  const packs = r.strings('packs');
  for (const key of packs) {
    if (!isPackKey(key)) {
      throw new FormatError('FORMAT_CORRUPT', what, `names pack ${JSON.stringify(key.length > 80 ? `${key.slice(0, 80)}…` : key)}, which is not a pack key (packs/<16-digit seq>-<8 hex digits>)`);
    }
  }
  const entryPack = u32Column(r.bytes('entryPack', n * 4), what, 'entries.entryPack');
  const entryOffset = u32Column(r.bytes('entryOffset', n * 4), what, 'entries.entryOffset');
  const entryLength = u32Column(r.bytes('entryLength', n * 4), what, 'entries.entryLength');
  checkEntryLengths(what, entryPack, ZERO_REGION, entryLength);
  const digests = r.bytes('digests', n * DIGEST_BYTES);
  let patches: { counts: Uint8Array; pack: Uint32Array; offset: Uint32Array; length: Uint32Array; starts: Uint32Array } | undefined;
  if (r.has('patches')) {
    const body = r.raw('patches');
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new FormatError('FORMAT_CORRUPT', what, 'field "entries.patches" is not a map');
    const p = new FieldReader(`${what} patches`, body as Record<string, unknown>);
    const counts = new Uint8Array(p.bytes('counts', n));
    const pack = u32Column(p.bytes('pack'), what, 'entries.patches.pack');
    const offset = u32Column(p.bytes('offset', pack.length * 4), what, 'entries.patches.offset');
    const length = u32Column(p.bytes('length', pack.length * 4), what, 'entries.patches.length');
    checkPatches(what, n, counts, pack, packs.length, length);
    // Where each entry's patches start.
    const starts = new Uint32Array(n + 1);
    for (let i = 0; i < n; i++) starts[i + 1] = starts[i]! + counts[i]!;
    patches = { counts, pack, offset, length, starts };
  }
  const out: PageRef[] = [];
  let from = 0;
  while (from < n) {
    const page = Math.floor(regions[from]! / context.pageRegions);
    let to = from;
    while (to < n && Math.floor(regions[to]! / context.pageRegions) === page) {
      if (regions[to]! >= context.regionCount) throw new FormatError('FORMAT_CORRUPT', what, `names region ${regions[to]}; the volume has ${context.regionCount}`);
      if (to > 0 && regions[to]! <= regions[to - 1]!) throw new FormatError('FORMAT_CORRUPT', what, 'regions are not strictly ascending');
      if (entryPack[to] !== ZERO_REGION && entryPack[to]! >= packs.length) throw new FormatError('FORMAT_CORRUPT', what, `an entry names pack ${entryPack[to]} of ${packs.length}`);
      to++;
    }
    // Page-local pack tables, as a page read from a page pack has.
    const local = new FirstUseTable<string>();
    const pagePacks = new Uint16Array(to - from);
    const localOf = (p: number): number => local.indexOf(packs[p]!);
    let pagePatches: PagePatches | undefined;
    const patchFrom = patches?.starts[from] ?? 0;
    const patchTo = patches?.starts[to] ?? 0;
    const localPatchPack = new Uint16Array(patchTo - patchFrom);
    for (let i = from; i < to; i++) {
      const p = entryPack[i]!;
      pagePacks[i - from] = p === ZERO_REGION ? ZERO_PACK : localOf(p);
      // In the canonical order a page has: each entry's base, then its patches.
      for (let j = patches?.starts[i] ?? 0; j < (patches?.starts[i + 1] ?? 0); j++) localPatchPack[j - patchFrom] = localOf(patches!.pack[j]!);
    }
    if (patches !== undefined && patchTo > patchFrom) {
      pagePatches = {
        counts: patches.counts.slice(from, to),
        pack: localPatchPack,
        offset: patches.offset.slice(patchFrom, patchTo),
        length: patches.length.slice(patchFrom, patchTo),
      };
    }
    const inline: RunPage = {
      page,
      regions: regions.slice(from, to),
      packs: local.values,
      entryPack: pagePacks,
      entryOffset: entryOffset.slice(from, to),
      entryLength: entryLength.slice(from, to),
      digests: digests.slice(from * DIGEST_BYTES, to * DIGEST_BYTES),
      ...(pagePatches === undefined ? {} : { patches: pagePatches }),
    };
    out.push({ page, count: to - from, ref: undefined, inline });
    from = to;
  }
  return out;
}

// ---- roots ---------------------------------------------------------------------------------

export interface RootContext {
  volumeId: string;
  pageRegions: number;
  regionCount: number;
  /** Pages in the volume. */
  pageTotal: number;
}

/** The map part of a root: the entries themselves (a small run) or its pages' refs. */
function encodeMap(pages: readonly PageRef[]): Record<string, unknown> {
  if (pages.every((p) => p.inline !== undefined)) return { entries: encodeEntries(pages.map((p) => p.inline!)) };
  if (!pages.every((p) => p.ref !== undefined)) throw new Error('a run stores all its pages inline or all in page packs');
  return {
    pages: {
      ...encodeBlobTable(pages.map((p) => p.ref!)),
      pages: u32Bytes(Uint32Array.from(pages, (p) => p.page)),
      counts: u32Bytes(Uint32Array.from(pages, (p) => p.count)),
    },
  };
}

function decodeMap(body: Record<string, unknown>, what: string, context: RootContext): PageRef[] {
  if (body['entries'] !== undefined) return decodeEntries(body['entries'], what, context);
  const blobs = decodeBlobTable(body['pages'], what, 'pages');
  const r = new FieldReader(`${what} pages`, body['pages'] as Record<string, unknown>);
  const pages = u32Column(r.bytes('pages', blobs.length * 4), what, 'pages.pages');
  const counts = u32Column(r.bytes('counts', blobs.length * 4), what, 'pages.counts');
  return blobs.map((ref, i) => {
    if (pages[i]! >= context.pageTotal) throw new FormatError('FORMAT_CORRUPT', what, `lists page ${pages[i]}; the volume has ${context.pageTotal}`);
    if (i > 0 && pages[i]! <= pages[i - 1]!) throw new FormatError('FORMAT_CORRUPT', what, 'pages are not strictly ascending');
    if (counts[i] === 0 || counts[i]! > context.pageRegions) throw new FormatError('FORMAT_CORRUPT', what, `page ${pages[i]} is listed with ${counts[i]} entries`);
    return { page: pages[i]!, count: counts[i]!, ref, inline: undefined };
  });
}

/** The run's interval fields, written only when they differ from `first - 1` and `last`. */
function encodeInterval(first: number, last: number, interval?: { from: number; to: number }): Record<string, unknown> {
  if (interval === undefined || (interval.from === first - 1 && interval.to === last)) return {};
  return { from: interval.from, to: interval.to };
}

function decodeInterval(r: FieldReader, what: string, first: number, last: number): { from: number; to: number } {
  const from = r.has('from') ? r.integer('from') : first - 1;
  const to = r.has('to') ? r.integer('to') : last;
  if (from > first - 1 || to < first || to > last) throw new FormatError('FORMAT_CORRUPT', what, `holds points ${from + 1}-${to}, which does not fit its points ${first}-${last}`);
  return { from, to };
}

export function encodeDeltaRoot(seq: number, info: DeltaInfo, pages: readonly PageRef[], volumeId: string, interval?: { from: number; to: number }): Uint8Array {
  return sealEnvelope(deltaKind(seq), {
    ...encodeInterval(seq, seq, interval),
    seq,
    volumeId,
    kind: info.kind,
    start: info.start,
    end: info.end,
    count: pages.reduce((n, p) => n + p.count, 0),
    storedBytes: info.storedBytes,
    ...(info.source === undefined ? {} : { sourceHost: info.source.host, sourcePath: info.source.path }),
    ...encodeMap(pages),
  });
}

export function decodeDeltaRoot(bytes: Uint8Array, expectedSeq: number, context: RootContext): RunRoot {
  const what = deltaKind(expectedSeq).what;
  const body = openEnvelope(deltaKind(expectedSeq), bytes);
  const r = new FieldReader(what, body);
  const seq = r.integer('seq', 1);
  if (seq !== expectedSeq) throw new FormatError('FORMAT_CORRUPT', what, `holds seq ${seq}; the key says ${expectedSeq}`);
  if (r.string('volumeId') !== context.volumeId) throw new FormatError('FORMAT_CORRUPT', what, 'belongs to another volume');
  const start = r.integer('start');
  const end = r.integer('end');
  if (end < start) throw new FormatError('FORMAT_CORRUPT', what, 'ends before it starts');
  const pages = decodeMap(body, what, context);
  const count = r.integer('count');
  if (pages.reduce((n, p) => n + p.count, 0) !== count) throw new FormatError('FORMAT_CORRUPT', what, `its pages hold other than its ${count} entries`);
  return {
    level: 0,
    first: seq,
    last: seq,
    ...decodeInterval(r, what, seq, seq),
    count,
    end,
    pages,
    delta: {
      kind: r.oneOf('kind', DELTA_KINDS),
      start,
      end,
      storedBytes: r.integer('storedBytes'),
      source: r.has('sourcePath') ? { host: r.string('sourceHost'), path: r.string('sourcePath') } : undefined,
    },
    summaries: undefined,
    summaryBlobs: [],
  };
}

export function encodeSpanRoot(
  span: { level: number; first: number; last: number; end: number; from?: number; to?: number },
  pages: readonly PageRef[],
  summaries: { inline: readonly PointSummary[] } | { blobs: readonly BlobRef[] },
  volumeId: string,
): Uint8Array {
  return sealEnvelope(spanKind(span.level, span.last), {
    ...encodeInterval(span.first, span.last, span.from === undefined || span.to === undefined ? undefined : { from: span.from, to: span.to }),
    level: span.level,
    first: span.first,
    last: span.last,
    end: span.end,
    volumeId,
    count: pages.reduce((n, p) => n + p.count, 0),
    ...encodeMap(pages),
    ...('inline' in summaries ? { summaries: summaryColumns(summaries.inline) } : { summaryBlobs: encodeBlobTable(summaries.blobs) }),
  });
}

/** Decodes and checks a span root; `level`, `first` and `last` are what its key names. */
export function decodeSpanRoot(bytes: Uint8Array, span: { level: number; first: number; last: number }, context: RootContext): RunRoot {
  const { level, first, last } = span;
  const what = spanKind(level, last).what;
  const body = openEnvelope(spanKind(level, last), bytes);
  const r = new FieldReader(what, body);
  if (r.integer('level') !== level || r.integer('first') !== first || r.integer('last') !== last) {
    throw new FormatError('FORMAT_CORRUPT', what, `covers ${r.integer('level')}/${r.integer('first')}-${r.integer('last')}; its key says ${level}/${first}-${last}`);
  }
  if (r.string('volumeId') !== context.volumeId) throw new FormatError('FORMAT_CORRUPT', what, 'belongs to another volume');
  const pages = decodeMap(body, what, context);
  const count = r.integer('count');
  if (pages.reduce((n, p) => n + p.count, 0) !== count) throw new FormatError('FORMAT_CORRUPT', what, `its pages hold other than its ${count} entries`);
  const points = last - first + 1;
  let summaries: PointSummary[] | undefined;
  let summaryBlobs: BlobRef[] = [];
  const end = r.integer('end');
  const interval = decodeInterval(r, what, first, last);
  if (body['summaries'] !== undefined) {
    summaries = readSummaryColumns(body['summaries'], first, points, what);
    const lastEnd = summaries[interval.to - first]!.end;
    if (lastEnd !== end) throw new FormatError('FORMAT_CORRUPT', what, `ends at ${end} but its point ${interval.to} at ${lastEnd}`);
  } else {
    summaryBlobs = decodeBlobTable(body['summaryBlobs'], what, 'summaryBlobs');
    if (summaryBlobs.length !== Math.ceil(points / SUMMARIES_PER_BLOB)) throw new FormatError('FORMAT_CORRUPT', what, `lists ${summaryBlobs.length} summary blobs for ${points} points`);
  }
  return { level, first, last, ...interval, count, end, pages, delta: undefined, summaries, summaryBlobs };
}

/** The 16-byte header of a page pack. */
export function pagePackHeader(): Uint8Array {
  const header = new Uint8Array(PAGE_PACK_HEADER_BYTES);
  header.set(Buffer.from(PAGE_PACK_MAGIC, 'latin1'), 0);
  new DataView(header.buffer).setUint16(8, FORMAT_VERSION, true);
  return header;
}
