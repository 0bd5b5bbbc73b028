// Reading and writing trust marks and scan records: which points in time cannot be trusted
// (suspect after a scan, damaged after a verify) and which stored bytes are known bad.

import pLimit from 'p-limit';
import { FormatError } from '../errors.js';
import { type StoredRegion, piecesOf } from '../model/regions.js';
import type { ObjectStore } from '../store/types.js';
import {
  type DamagedLocation,
  MARK_PREFIX,
  type MarksObject,
  SCAN_PREFIX,
  type ScanRecord,
  type TrustMark,
  decodeMarks,
  decodeScanRecord,
  encodeMarks,
  encodeScanRecord,
  marksKey,
  parseMarksKey,
  timeKey,
} from './records.js';

export interface Trust {
  /** Marks by point in time (seq), each with the key of the record that made it. */
  marks: Map<number, Array<TrustMark & { record: string }>>;
  /** `pack@offset` of stored bytes found missing or corrupt. */
  damaged: Set<string>;
  damagedLocations: DamagedLocation[];
  /**
   * `marks/` objects that cannot be read: which points they mark, and which stored bytes they
   * name as bad, is unknown; which points they can concern is in their key (unreadableConcerns).
   */
  unreadable: UnreadableMarks[];
}

export interface UnreadableMarks {
  key: string;
  /** When it was written, from the key (undefined if the key has none). */
  time: number | undefined;
  /** The newest point in time its writer had seen, from the key (undefined: the key has another shape). */
  seq: number | undefined;
  /** What is wrong with it (one line). */
  error: string;
}

/**
 * Whether an unreadable marks object may mark point `seq`: a writer marks only points it has
 * seen, so every point up to the key's seq, whatever any clock said; a key of another shape
 * concerns every point.
 */
export function unreadableConcerns(u: Pick<UnreadableMarks, 'seq'>, seq: number): boolean {
  return u.seq === undefined || seq <= u.seq;
}

async function readAll<T>(store: ObjectStore, prefix: string, decode: (bytes: Uint8Array, key: string) => T, signal?: AbortSignal): Promise<Array<{ key: string; value: T }>> {
  const keys: string[] = [];
  for await (const info of store.list(prefix, { signal })) keys.push(info.key);
  keys.sort();
  const limit = pLimit(16);
  return Promise.all(keys.map((key) => limit(async () => ({ key, value: decode(await store.get(key, { signal }), key) }))));
}

export async function readTrust(store: ObjectStore, signal?: AbortSignal): Promise<Trust> {
  const trust: Trust = { marks: new Map(), damaged: new Set(), damagedLocations: [], unreadable: [] };
  // One garbled marks object must not stop every command: it is kept aside, and each reader
  // decides how careful to be about what it might have said (restore: see choosePoint).
  const decodeOrKeep = (bytes: Uint8Array, key: string): MarksObject | FormatError => {
    try {
      return decodeMarks(bytes, key);
    } catch (error) {
      if (error instanceof FormatError) return error;
      throw error;
    }
  };
  for (const { key, value } of await readAll(store, MARK_PREFIX, decodeOrKeep, signal)) {
    if (value instanceof FormatError) {
      const { time, seq } = parseMarksKey(key);
      trust.unreadable.push({ key, time, seq, error: value.message.slice(value.what.length + 2) });
      continue;
    }
    for (const mark of value.marks) {
      let list = trust.marks.get(mark.seq);
      if (list === undefined) trust.marks.set(mark.seq, (list = []));
      list.push({ ...mark, record: value.record });
    }
    for (const location of value.damaged) {
      const id = locationId(location);
      if (!trust.damaged.has(id)) trust.damagedLocations.push(location);
      trust.damaged.add(id);
    }
  }
  return trust;
}

/** How a stored region's location is named in `damaged` (`pack@offset`). */
export function locationId(location: { pack: string; offset: number }): string {
  return `${location.pack}@${location.offset}`;
}

/**
 * What a writer (backup, scan, protect) takes from the marks before each delta it writes: which
 * stored bytes it must not deduplicate against. One reading for every writer (readWriterTrust).
 */
export interface WriterTrust {
  /** `pack@offset` of stored bytes found missing or corrupt: never reused, stored again. */
  damaged: ReadonlySet<string>;
  /**
   * Keys of `marks/` objects that cannot be read. What they named as damaged is unknown, so
   * while there is any, no location stored by an earlier delta is reused (mayReuse).
   */
  unreadable: string[];
}

export async function readWriterTrust(store: ObjectStore, signal?: AbortSignal): Promise<WriterTrust> {
  const trust = await readTrust(store, signal);
  return { damaged: trust.damaged, unreadable: trust.unreadable.map((u) => u.key) };
}

/** Whether a new delta may refer to region bytes an earlier delta stored at `location`. */
export function mayReuse(trust: WriterTrust, location: { pack: string; offset: number }): boolean {
  return trust.unreadable.length === 0 && !trust.damaged.has(locationId(location));
}

/** Whether any stored piece of a region (its base or a patch) is known damaged. */
export function storedDamaged(damaged: ReadonlySet<string>, stored: StoredRegion | undefined): boolean {
  return stored !== undefined && piecesOf(stored).some((piece) => damaged.has(locationId(piece)));
}

/** Puts `marks` under a new key; `newestSeq` is the newest point in time the writer has seen. */
export async function putMarks(store: ObjectStore, marks: MarksObject, newestSeq: number, signal?: AbortSignal): Promise<string> {
  const key = marksKey(marks.created, newestSeq);
  await store.put(key, encodeMarks(marks), { signal, ifAbsent: true });
  return key;
}

/** A key for a scan record that will be written at `time` (marks name it before it exists). */
export function scanRecordKey(time: number): string {
  return timeKey(SCAN_PREFIX, time);
}

export async function putScanRecord(store: ObjectStore, key: string, record: ScanRecord, signal?: AbortSignal): Promise<void> {
  await store.put(key, encodeScanRecord(record), { signal, ifAbsent: true });
}

export async function readScanRecords(store: ObjectStore, signal?: AbortSignal): Promise<Array<{ key: string; value: ScanRecord }>> {
  return readAll(store, SCAN_PREFIX, decodeScanRecord, signal);
}

/**
 * The newest point in time an unreadable marks object may concern (0: none): the seq its key
 * names (the newest point its writer had seen), or every point when the key names none.
 */
export function unreadableCutoff(trust: Trust, latest: number): number {
  let cutoff = 0;
  for (const u of trust.unreadable) cutoff = Math.max(cutoff, Math.min(u.seq ?? latest, latest));
  return cutoff;
}
