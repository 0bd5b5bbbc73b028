// log: the timeline of a repository, oldest first: every point in time (delta), with the marks
// that say it cannot be trusted and which scan or verify made them, and the scans themselves.

import type { DeltaKind } from '../model/pit-map.js';
import type { ScanRecord } from '../repo/records.js';
import { Repository } from '../repo/repository.js';
import { readScanRecords, readTrust } from '../repo/trust.js';
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
  /** Marked suspect by a scan or damaged by a verify: restore passes over it. */
  suspect: boolean;
  marks: LogMark[];
  checkpoint: boolean;
}

export interface ScanEvent extends Omit<ScanRecord, 'start' | 'end'> {
  type: 'scan';
  record: string;
  /** The end of the scan, ISO 8601 UTC (where it sits in the timeline). */
  time: string;
  start: string;
}

export type TimelineEntry = LogEntry | ScanEvent;

export interface LogResult {
  location: string;
  volumeId: string;
  volumeSize: number;
  regionSize: number;
  /** Deltas and scans, in time order. */
  timeline: TimelineEntry[];
  /** Just the deltas. */
  entries: LogEntry[];
}

export async function log(options: { store: ObjectStore; signal?: AbortSignal }): Promise<LogResult> {
  const { store, signal } = options;
  const repo = await Repository.open(store, signal);
  const [seqs, checkpoints, trust, scans] = await Promise.all([
    repo.deltaSeqs(signal),
    repo.checkpointSeqs(signal),
    readTrust(store, signal),
    readScanRecords(store, signal),
  ]);
  const withCheckpoint = new Set(checkpoints);
  const deltas = await repo.readDeltas(seqs, signal);
  const entries = deltas.map((delta): LogEntry => {
    const marks = (trust.marks.get(delta.seq) ?? []).map((m) => ({ kind: m.kind, reason: m.reason, record: m.record, regions: m.regions }));
    const entry: LogEntry = {
      type: 'delta',
      seq: delta.seq,
      time: new Date(delta.end).toISOString(),
      start: new Date(delta.start).toISOString(),
      kind: delta.kind,
      regions: delta.changed.count(),
      bytes: delta.storedBytes,
      suspect: marks.length > 0,
      marks,
      checkpoint: withCheckpoint.has(delta.seq),
    };
    delta.changed.dispose();
    return entry;
  });
  const events = scans.map(({ key, value }): ScanEvent => ({
    ...value,
    type: 'scan',
    record: key,
    time: new Date(value.end).toISOString(),
    start: new Date(value.start).toISOString(),
  }));
  const timeline: TimelineEntry[] = [...entries, ...events].sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : a.type === 'delta' ? -1 : 1));
  return {
    location: store.location,
    volumeId: repo.config.volumeId,
    volumeSize: repo.config.volumeSize,
    regionSize: repo.config.regionSize,
    timeline,
    entries,
  };
}
