// log: the timeline of a repository, oldest first: every point in time (delta), with the marks
// that say it cannot be trusted and which scan or verify made them, and the scans themselves.

import type { DeltaKind } from '../model/pit-map.js';
import type { ScanRecord } from '../repo/records.js';
import { deltaKey } from '../repo/keys.js';
import { Repository } from '../repo/repository.js';
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
  checkpoint: boolean;
  /** False when a delta before it is missing and no stored checkpoint stands in for it. */
  restorable: boolean;
}

/** A delta missing from the chain (it sits in the timeline after the stored delta before it). */
export interface MissingDeltaEntry {
  type: 'missing';
  seq: number;
  key: string;
  /** Later points in time it keeps from being built (those with no checkpoint past it). */
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
}

export async function log(options: { store: ObjectStore; signal?: AbortSignal }): Promise<LogResult> {
  const { store, signal } = options;
  const repo = await Repository.open(store, signal);
  const [chain, trust, scans] = await Promise.all([repo.listChain(signal), readTrust(store, signal), readScanRecords(store, signal)]);
  const withCheckpoint = new Set(chain.checkpoints);
  const deltas = await repo.readDeltas(chain.seqs, signal);
  const entries = deltas.map((delta): LogEntry => {
    const marks = (trust.marks.get(delta.seq) ?? []).map((m) => ({ kind: m.kind, reason: m.reason, record: m.record, regions: m.regions }));
    // A marks object nobody can read may concern the points up to the newest its writer had seen.
    const marksUnreadable = trust.unreadable.filter((u) => unreadableConcerns(u, delta)).map((u) => u.key);
    const entry: LogEntry = {
      type: 'delta',
      seq: delta.seq,
      time: new Date(delta.end).toISOString(),
      start: new Date(delta.start).toISOString(),
      kind: delta.kind,
      regions: delta.changed.count(),
      bytes: delta.storedBytes,
      suspect: marks.length > 0 || marksUnreadable.length > 0,
      marksUnreadable,
      marks,
      checkpoint: withCheckpoint.has(delta.seq),
      restorable: chain.blockedBy(delta.seq) === undefined,
    };
    delta.changed.dispose();
    return entry;
  });
  const missing = chain.missing.map(
    (seq): MissingDeltaEntry => ({ type: 'missing', seq, key: deltaKey(seq), unrestorable: entries.filter((e) => chain.blockedBy(e.seq) === seq).map((e) => e.seq) }),
  );
  const events = scans.map(({ key, value }): ScanEvent => ({
    ...value,
    type: 'scan',
    record: key,
    time: new Date(value.end).toISOString(),
    start: new Date(value.start).toISOString(),
  }));
  const unreadableMarks = trust.unreadable.map(
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
  const missingBySeq = new Map(missing.map((m) => [m.seq, m]));
  const timeline: TimelineEntry[] = missing.filter((m) => m.seq < chain.seqs[0]!);
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
  };
}
