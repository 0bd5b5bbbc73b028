// Objects that record what integrity work found, written once and never changed (deltas are
// never rewritten): trust marks (`marks/`: points in time that are suspect after a scan, or
// damaged after a verify) and scan records (`scans/`). Layouts are in docs/FORMAT.md.

import { randomBytes } from 'node:crypto';
import { FormatError } from '../errors.js';
import { FORMAT_VERSION, FieldReader, openEnvelope, sealEnvelope } from './envelope.js';
import { seqName } from './keys.js';

export const MARK_PREFIX = 'marks/';
export const SCAN_PREFIX = 'scans/';

const MARKS_KIND = { magic: 'CDPS3MRK', version: FORMAT_VERSION, what: 'trust marks' } as const;
const SCAN_KIND = { magic: 'CDPS3SCN', version: FORMAT_VERSION, what: 'scan record' } as const;

/** At most this many region numbers are kept per mark, as examples for people. */
export const MAX_REGIONS_LISTED = 64;

export type MarkKind = 'suspect' | 'damaged';

export interface TrustMark {
  /** The point in time (delta seq) that cannot be trusted. */
  seq: number;
  kind: MarkKind;
  reason: string;
  /** Some of the regions behind the mark (at most MAX_REGIONS_LISTED). */
  regions: number[];
}

export interface DamagedLocation {
  pack: string;
  offset: number;
  length: number;
  /** Why: 'missing' pack or 'corrupt' bytes (digest mismatch). */
  problem: 'missing' | 'corrupt';
}

export interface MarksObject {
  /** ms since epoch */
  created: number;
  /** The scan or verify record that made these marks. */
  record: string;
  marks: TrustMark[];
  /** For damage: the stored bytes found bad, so backups re-upload them. */
  damaged: DamagedLocation[];
}

/** `<ms epoch, 16 digits>-<random>`: sorts in time order. */
export function timeKey(prefix: string, time: number): string {
  return `${prefix}${String(time).padStart(16, '0')}-${randomBytes(4).toString('hex')}`;
}

/**
 * `marks/<ms epoch, 16 digits>-<seq, 16 digits>-<random>`: `seq` is the newest point in time the
 * writer had seen, so a reader that cannot read the object still knows which points it can
 * concern (those up to `seq`), whatever the writer's clock said.
 */
export function marksKey(time: number, seq: number): string {
  return `${MARK_PREFIX}${String(time).padStart(16, '0')}-${seqName(seq)}-${randomBytes(4).toString('hex')}`;
}

/** What a marks key says (`time` and `seq`), or nothing for a key of any other shape. */
export function parseMarksKey(key: string): { time?: number; seq?: number } {
  const match = /^marks\/(\d{16})-(\d{16})-[0-9a-f]{8}$/.exec(key);
  return match === null ? {} : { time: Number(match[1]), seq: Number(match[2]) };
}

export function encodeMarks(value: MarksObject): Uint8Array {
  return sealEnvelope(MARKS_KIND, {
    created: value.created,
    record: value.record,
    marks: value.marks.map((m) => ({ seq: m.seq, kind: m.kind, reason: m.reason, regions: m.regions })),
    damaged: value.damaged.map((d) => ({ pack: d.pack, offset: d.offset, length: d.length, problem: d.problem })),
  });
}

export function decodeMarks(bytes: Uint8Array, key: string): MarksObject {
  const kind = { ...MARKS_KIND, what: `trust marks ${key}` };
  const body = openEnvelope(kind, bytes);
  const r = new FieldReader(kind.what, body);
  const list = (field: string): Array<Record<string, unknown>> => {
    const value = body[field];
    return Array.isArray(value) ? (value as Array<Record<string, unknown>>) : [];
  };
  return {
    created: r.integer('created'),
    record: r.string('record'),
    marks: list('marks').map((m) => {
      const f = new FieldReader(kind.what, m);
      const regions = m['regions'];
      return {
        seq: f.integer('seq', 1),
        kind: f.oneOf('kind', ['suspect', 'damaged'] as const),
        reason: f.string('reason'),
        regions: Array.isArray(regions) ? regions.filter((x): x is number => typeof x === 'number') : [],
      };
    }),
    damaged: list('damaged').map((d) => {
      const f = new FieldReader(kind.what, d);
      return { pack: f.string('pack'), offset: f.integer('offset'), length: f.integer('length'), problem: f.oneOf('problem', ['missing', 'corrupt'] as const) };
    }),
  };
}

export interface ScanRecord {
  /** ms since epoch: the scan interval's start, the end of the copy interval. */
  start: number;
  end: number;
  source: string;
  dryRun: boolean;
  /** Only the regions of a dirty region log were scanned. */
  drl: boolean;
  /** Delta sealed from pending host changes before the scan (claim 3), if any. */
  presentSeq: number | undefined;
  /** The newest delta committed before the scan interval. */
  scanStartSeq: number;
  scanned: number;
  /** Regions whose primary content differed from the PIT map (the compare delta map). */
  discrepancies: number;
  /** Host writes during the scan interval (the scan delta map), subtracted from the compare map. */
  writtenDuringScan: number;
  /** Regions in the revised compare delta map. */
  revised: number;
  /** Host writes during the copy interval (the host change delta map). */
  writtenDuringCopy: number;
  /** Regions in the fix-up delta (revised compare ∪ host changes), and its seq. */
  repaired: number;
  fixupSeq: number | undefined;
  suspect: number[];
}

export function encodeScanRecord(record: ScanRecord): Uint8Array {
  const { presentSeq, fixupSeq, ...rest } = record;
  return sealEnvelope(SCAN_KIND, {
    ...rest,
    ...(presentSeq === undefined ? {} : { presentSeq }),
    ...(fixupSeq === undefined ? {} : { fixupSeq }),
  });
}

export function decodeScanRecord(bytes: Uint8Array, key: string): ScanRecord {
  const kind = { ...SCAN_KIND, what: `scan record ${key}` };
  const body = openEnvelope(kind, bytes);
  const r = new FieldReader(kind.what, body);
  const suspect = body['suspect'];
  return {
    start: r.integer('start'),
    end: r.integer('end'),
    source: r.string('source'),
    dryRun: body['dryRun'] === true,
    drl: body['drl'] === true,
    presentSeq: r.has('presentSeq') ? r.integer('presentSeq', 1) : undefined,
    scanStartSeq: r.integer('scanStartSeq'),
    scanned: r.integer('scanned'),
    discrepancies: r.integer('discrepancies'),
    writtenDuringScan: r.integer('writtenDuringScan'),
    revised: r.integer('revised'),
    writtenDuringCopy: r.integer('writtenDuringCopy'),
    repaired: r.integer('repaired'),
    fixupSeq: r.has('fixupSeq') ? r.integer('fixupSeq', 1) : undefined,
    suspect: Array.isArray(suspect) ? suspect.filter((x): x is number => typeof x === 'number') : [],
  };
}

export const PRUNE_PREFIX = 'prunes/';
const PRUNE_KIND = { magic: 'CDPS3PRN', version: FORMAT_VERSION, what: 'prune record' } as const;

/**
 * What one prune run found unreferenced and did not delete yet (`prunes/<time>-<random>`): each
 * candidate with the time a prune first found it unreferenced. A later prune deletes a candidate
 * once that time is older than its grace and the object is still unreferenced.
 */
export interface PruneRecord {
  volumeId: string;
  /** ms since epoch */
  created: number;
  /** The newest point in time when the candidates were found. */
  latest: number;
  candidates: { key: string; since: number }[];
}

export function encodePruneRecord(value: PruneRecord): Uint8Array {
  return sealEnvelope(PRUNE_KIND, {
    volumeId: value.volumeId,
    created: value.created,
    latest: value.latest,
    candidates: value.candidates.map((c) => ({ key: c.key, since: c.since })),
  });
}

export function decodePruneRecord(bytes: Uint8Array, key: string): PruneRecord {
  const kind = { ...PRUNE_KIND, what: `prune record ${key}` };
  const body = openEnvelope(kind, bytes);
  const r = new FieldReader(kind.what, body);
  const candidates = body['candidates'];
  return {
    volumeId: r.string('volumeId'),
    created: r.integer('created'),
    latest: r.integer('latest'),
    candidates: (Array.isArray(candidates) ? (candidates as Array<Record<string, unknown>>) : []).map((c) => {
      const f = new FieldReader(kind.what, c);
      return { key: f.string('key'), since: f.integer('since') };
    }),
  };
}

export const FORGET_PREFIX = 'forgets/';
const FORGET_KIND = { magic: 'CDPS3FGT', version: FORMAT_VERSION, what: 'forget record' } as const;

/**
 * Points in time a `forget` removed from the history (`forgets/<time>-<random>`): inclusive
 * ranges of seqs, ascending. The history's forgotten points are the union of every record's.
 */
export interface ForgetRecord {
  volumeId: string;
  /** ms since epoch */
  created: number;
  /** The newest point when it was written (never itself forgotten). */
  latest: number;
  ranges: Array<[number, number]>;
}

/** The fields a forget record and a compaction record share, in their stored order. */
function rangeFields(value: Omit<ForgetRecord, 'volumeId'>): Record<string, unknown> {
  return { created: value.created, latest: value.latest, first: value.ranges.map(([a]) => a), last: value.ranges.map(([, b]) => b) };
}

export function encodeForgetRecord(value: ForgetRecord): Uint8Array {
  return sealEnvelope(FORGET_KIND, { volumeId: value.volumeId, ...rangeFields(value) });
}

export function decodeForgetRecord(bytes: Uint8Array, key: string): ForgetRecord {
  const kind = { ...FORGET_KIND, what: `forget record ${key}` };
  const body = openEnvelope(kind, bytes);
  const r = new FieldReader(kind.what, body);
  const volumeId = r.string('volumeId');
  const created = r.integer('created');
  const latest = r.integer('latest', 1);
  const first = body['first'];
  const last = body['last'];
  const ok = (v: unknown): v is number[] => Array.isArray(v) && v.every((x) => Number.isSafeInteger(x) && (x as number) >= 1);
  if (!ok(first) || !ok(last) || first.length !== last.length) {
    throw new FormatError('FORMAT_CORRUPT', kind.what, '`first` and `last` must be arrays of sequence numbers of the same length');
  }
  const ranges: Array<[number, number]> = first.map((a, i) => [a, last[i]!]);
  for (let i = 0; i < ranges.length; i++) {
    const [a, b] = ranges[i]!;
    if (a > b || b >= latest || (i > 0 && a <= ranges[i - 1]![1] + 1)) {
      throw new FormatError('FORMAT_CORRUPT', kind.what, `range ${a}-${b} is not ascending, disjoint and before the newest point ${latest}`);
    }
  }
  return { volumeId, created, latest, ranges };
}

const COMPACTION_KIND = { magic: 'CDPS3CMP', version: FORMAT_VERSION, what: 'compaction record' } as const;

/**
 * A compaction (`compactions/<generation>`): the commit point of generation `generation`, whose
 * runs (`<run key>.<generation>`) were all stored before it. `ranges` is the forgotten set the
 * compaction folded away: under it, a forgotten delta and a span of forgotten points only are
 * empty. See docs/FORMAT.md, "Compaction".
 */
export interface CompactionRecord {
  volumeId: string;
  generation: number;
  /** ms since epoch */
  created: number;
  /** The newest point when it was written. */
  latest: number;
  ranges: Array<[number, number]>;
}

export function encodeCompactionRecord(value: CompactionRecord): Uint8Array {
  return sealEnvelope(COMPACTION_KIND, { volumeId: value.volumeId, generation: value.generation, ...rangeFields(value) });
}

export function decodeCompactionRecord(bytes: Uint8Array, key: string, expectedGeneration: number): CompactionRecord {
  const kind = { ...COMPACTION_KIND, what: `compaction record ${key}` };
  const body = openEnvelope(kind, bytes);
  const r = new FieldReader(kind.what, body);
  const generation = r.integer('generation', 1);
  if (generation !== expectedGeneration) throw new FormatError('FORMAT_CORRUPT', kind.what, `is generation ${generation}; its key says ${expectedGeneration}`);
  // The same ranges as a forget record's, with the same rules.
  const asForget = decodeForgetRecord(sealEnvelope(FORGET_KIND, { volumeId: body['volumeId'], created: body['created'], latest: body['latest'], first: body['first'], last: body['last'] }), key);
  return { volumeId: asForget.volumeId, generation, created: asForget.created, latest: asForget.latest, ranges: asForget.ranges };
}

const RETENTION_KIND = { magic: 'CDPS3RET', version: FORMAT_VERSION, what: 'retention record' } as const;

/**
 * The last retention extension of an Object Lock repository (key `retention`, rewritten by each
 * extension; core/retention.ts): at `at`, every object the history needed (and every object put
 * since, by its own retention) was retained until at least `until`.
 */
export interface RetentionRecord {
  volumeId: string;
  /** ms since epoch */
  at: number;
  /** ms since epoch */
  until: number;
  /** Objects whose retention the extension set. */
  extended: number;
}

export function encodeRetentionRecord(value: RetentionRecord): Uint8Array {
  return sealEnvelope(RETENTION_KIND, { volumeId: value.volumeId, at: value.at, until: value.until, extended: value.extended });
}

export function decodeRetentionRecord(bytes: Uint8Array): RetentionRecord {
  const r = new FieldReader(RETENTION_KIND.what, openEnvelope(RETENTION_KIND, bytes));
  return { volumeId: r.string('volumeId'), at: r.integer('at'), until: r.integer('until'), extended: r.integer('extended') };
}
