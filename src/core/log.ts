// log: the timeline of a repository, oldest first: every point in time (delta), with the marks
// that say it cannot be trusted and which scan or verify made them, and the scans themselves.

import type { DeltaKind } from '../model/regions.js';
import { InvalidArgumentError } from '../errors.js';
import { type ChainIndex, ChainGapError } from '../repo/chain-index.js';
import { lastAtOrBefore } from './points.js';
import type { ScanRecord } from '../repo/records.js';
import { deltaKey } from '../repo/keys.js';
import { Repository } from '../repo/repository.js';
import type { PointSummary } from '../repo/run-codec.js';
import { readScanRecords, readTrust, unreadableConcerns } from '../repo/trust.js';
import type { ObjectStore } from '../store/types.js';

export interface LogMark {
  kind: 'suspect' | 'damaged';
  reason: string;
  /** The scan or verify record that made the mark. */
  record: string;
  regions: number[];
}

export interface LogEntry {
  type: 'delta';
  seq: number;
  /** The point in time (the delta's end), ISO 8601 UTC. */
  time: string;
  /** When the delta's interval began, ISO 8601 UTC. */
  start: string;
  kind: DeltaKind;
  /** Regions changed in this delta. */
  regions: number;
  /** Region bytes this delta stored (after deduplication). */
  bytes: number;
  /** Marked suspect by a scan or damaged by a verify, or possibly marked: restore passes over it. */
  suspect: boolean;
  /** Unreadable marks objects that could concern this point (written after it ended). */
  marksUnreadable: string[];
  marks: LogMark[];
  /** Levels of the spans that end at this point (docs/FORMAT.md, "Spans"). */
  spans: number[];
  /** False when it, or a delta before it, is missing and no span stands in for it. */
  restorable: boolean;
  /** Its delta is missing (what it is comes from a span over it). */
  deltaMissing: boolean;
}

/** A delta missing from the chain (it sits in the timeline after the stored delta before it). */
export interface MissingDeltaEntry {
  type: 'missing';
  seq: number;
  key: string;
  /** Points in time it keeps from being built (those no span stands in for it). */
  unrestorable: number[];
}

export interface ScanEvent extends Omit<ScanRecord, 'start' | 'end'> {
  type: 'scan';
  record: string;
  /** The end of the scan, ISO 8601 UTC (where it sits in the timeline). */
  time: string;
  start: string;
}

/** A `marks/` object that cannot be read (it sits in the timeline at its key's time). */
export interface UnreadableMarksEntry {
  type: 'unreadable-marks';
  key: string;
  /** When it was written (from the key), ISO 8601 UTC; '' if the key has no time. */
  time: string;
  error: string;
  /** The newest point in time its writer had seen, from the key (absent in the old key form). */
  newestSeq?: number;
  /** The points in time it could concern: restore passes over them unless --allow-suspect. */
  possiblyMarked: number[];
}

export type TimelineEntry = LogEntry | ScanEvent | MissingDeltaEntry | UnreadableMarksEntry;

export interface LogResult {
  location: string;
  volumeId: string;
  volumeSize: number;
  regionSize: number;
  /** Deltas and scans, in time order. */
  timeline: TimelineEntry[];
  /** Just the deltas. */
  entries: LogEntry[];
  /** Deltas missing from the chain. */
  missing: MissingDeltaEntry[];
  unreadableMarks: UnreadableMarksEntry[];
  /** The first point shown (`since`/`last`); the points before it were not read. */
  first: number;
  /** The newest point of the chain. */
  latest: number;
  /** Points from `first` on that forget removed (not listed). */
  forgotten: number;
  /** Forget records that cannot be read: the points they removed may show as missing. */
  unreadableForgets: Array<{ key: string; error: string }>;
}

export interface LogOptions {
  store: ObjectStore;
  signal?: AbortSignal;
  /** Only points from this one on: a sequence number, or the first point at or after a time (ms). */
  since?: { seq: number } | { time: number };
  /** Only the newest N points (with `since`, the newest N of those). */
  last?: number;
}

export async function log(options: LogOptions): Promise<LogResult> {
  const { store, signal } = options;
  if (options.last !== undefined && !(Number.isSafeInteger(options.last) && options.last >= 1)) {
    throw new InvalidArgumentError(`--last must be a whole number of at least 1, not ${String(options.last)}`);
  }
  const repo = await Repository.open(store, signal);
  const [index, trust, scans] = await Promise.all([repo.fullIndex(signal), readTrust(store, signal), readScanRecords(store, signal)]);
  // The first point shown: the points before it are not read at all (a binary search by time
  // reads O(log n) summaries), so a short view of a long history stays cheap.
  let first = 1;
  if (options.since !== undefined) {
    first = 'seq' in options.since ? options.since.seq : (await lastAtOrBefore(repo, index, options.since.time - 1, signal)) + 1;
  }
  if (options.last !== undefined) {
    // The newest N points: removed ones (forget) are not points, so they are stepped over.
    let from = index.latest + 1;
    for (let n = 0; n < options.last && from > 1; n++) from = index.forgotten.keptAtOrBefore(from - 1);
    first = Math.max(first, Math.max(from, 1));
  }
  // Scans and unreadable marks are shown from the end of the kept point before the first one shown.
  const before = index.forgotten.keptAtOrBefore(first - 1);
  const sinceTime = before < 1 ? -Infinity : await pointEnd(repo, index, before, options.since, signal);
  const missingSeqs = new Set(index.missingDeltas().filter((seq) => seq >= first));
  const spansAt = new Map<number, number[]>();
  for (const span of index.spans()) (spansAt.get(span.last) ?? spansAt.set(span.last, []).get(span.last)!).push(span.level);
  const entries: LogEntry[] = [];
  const blocked = new Map<number, number | undefined>();
  // Points removed by forget are not points any more.
  for (const seq of index.forgotten.keptSeqs(first, index.latest)) {
    blocked.set(seq, await index.blockedBy(seq, signal));
    let summary: PointSummary;
    try {
      // From the spans over it where they stand (one read for many points), else its delta.
      summary = await repo.summary(index, seq, signal);
    } catch (error) {
      if (error instanceof ChainGapError) continue; // missing, and no span holds its summary
      throw error;
    }
    if (summary.kind === 'removed') continue; // folded away by a compaction (a forget names it too)
    const marks = (trust.marks.get(seq) ?? []).map((m) => ({ kind: m.kind, reason: m.reason, record: m.record, regions: m.regions }));
    // A marks object nobody can read may concern the points up to the newest its writer had seen.
    const marksUnreadable = trust.unreadable.filter((u) => unreadableConcerns(u, seq)).map((u) => u.key);
    entries.push({
      type: 'delta',
      seq,
      time: new Date(summary.end).toISOString(),
      start: new Date(summary.start).toISOString(),
      kind: summary.kind,
      regions: summary.count,
      bytes: summary.storedBytes,
      suspect: marks.length > 0 || marksUnreadable.length > 0,
      marksUnreadable,
      marks,
      spans: spansAt.get(seq) ?? [],
      restorable: blocked.get(seq) === undefined,
      deltaMissing: missingSeqs.has(seq),
    });
  }
  const missing = [...missingSeqs].map(
    (seq): MissingDeltaEntry => ({ type: 'missing', seq, key: deltaKey(seq), unrestorable: entries.filter((e) => blocked.get(e.seq) === seq).map((e) => e.seq) }),
  );
  const events = scans.filter(({ value }) => value.end > sinceTime).map(({ key, value }): ScanEvent => ({
    ...value,
    type: 'scan',
    record: key,
    time: new Date(value.end).toISOString(),
    start: new Date(value.start).toISOString(),
  }));
  const unreadableMarks = trust.unreadable.filter((u) => first <= 1 || (u.time ?? Infinity) > sinceTime).map(
    (u): UnreadableMarksEntry => ({
      type: 'unreadable-marks',
      key: u.key,
      time: u.time === undefined ? '' : new Date(u.time).toISOString(),
      error: u.error,
      ...(u.seq === undefined ? {} : { newestSeq: u.seq }),
      possiblyMarked: entries.filter((e) => e.marksUnreadable.includes(u.key)).map((e) => e.seq),
    }),
  );
  const sorted: Array<LogEntry | ScanEvent | UnreadableMarksEntry> = [...entries, ...events, ...unreadableMarks].sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : a.type === 'delta' ? -1 : 1));
  // A missing delta has no time: it goes right after the stored delta before it.
  // A missing delta whose point a span still describes is that point's entry (deltaMissing).
  const described = new Set(entries.map((e) => e.seq));
  const missingBySeq = new Map(missing.filter((m) => !described.has(m.seq)).map((m) => [m.seq, m]));
  const firstStored = entries[0]?.seq ?? Infinity;
  const timeline: TimelineEntry[] = [...missingBySeq.values()].filter((m) => m.seq < firstStored);
  for (const t of sorted) {
    timeline.push(t);
    if (t.type === 'delta') for (let seq = t.seq + 1; missingBySeq.has(seq); seq++) timeline.push(missingBySeq.get(seq)!);
  }
  return {
    location: store.location,
    volumeId: repo.config.volumeId,
    volumeSize: repo.config.volumeSize,
    regionSize: repo.config.regionSize,
    timeline,
    entries,
    missing,
    unreadableMarks,
    first,
    latest: index.latest,
    forgotten: index.forgotten.within(first, index.latest).reduce((n, [a, b]) => n + b - a + 1, 0),
    unreadableForgets: index.unreadableForgets,
  };
}

/** The end of point `seq`; if no summary can say (its delta and spans lost), the `since` time, or the start of time. */
async function pointEnd(repo: Repository, index: ChainIndex, seq: number, since: LogOptions['since'], signal?: AbortSignal): Promise<number> {
  try {
    return (await repo.summary(index, seq, signal)).end;
  } catch (error) {
    if (!(error instanceof ChainGapError)) throw error;
    return since !== undefined && 'time' in since ? since.time - 1 : -Infinity;
  }
}

export type SummaryUnit = 'hour' | 'day';

/** One line of `log --summary`: the points whose time falls into one hour or day (UTC). */
export interface LogSummaryLine {
  /** The bucket's start, ISO 8601 UTC. */
  start: string;
  points: number;
  firstSeq: number;
  lastSeq: number;
  regions: number;
  bytes: number;
  kinds: Record<DeltaKind, number>;
  /** Points restore passes over (marked, possibly marked, or unrestorable). */
  notTrusted: number;
}

const UNIT_MS: Record<SummaryUnit, number> = { hour: 3_600_000, day: 86_400_000 };

/** Groups points by the UTC hour or day of their time, oldest first; buckets without points are left out. */
export function summarizeLog(entries: readonly LogEntry[], unit: SummaryUnit): LogSummaryLine[] {
  const lines = new Map<number, LogSummaryLine>();
  for (const e of entries) {
    const bucket = Math.floor(Date.parse(e.time) / UNIT_MS[unit]) * UNIT_MS[unit];
    let line = lines.get(bucket);
    if (line === undefined) {
      line = { start: new Date(bucket).toISOString(), points: 0, firstSeq: e.seq, lastSeq: e.seq, regions: 0, bytes: 0, kinds: { base: 0, host: 0, fixup: 0 }, notTrusted: 0 };
      lines.set(bucket, line);
    }
    line.points++;
    line.firstSeq = Math.min(line.firstSeq, e.seq);
    line.lastSeq = Math.max(line.lastSeq, e.seq);
    line.regions += e.regions;
    line.bytes += e.bytes;
    line.kinds[e.kind]++;
    if (e.suspect || !e.restorable) line.notTrusted++;
  }
  return [...lines.entries()].sort((a, b) => a[0] - b[0]).map(([, line]) => line);
}
