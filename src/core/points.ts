// Choosing a point in time: `latest`, a sequence number, or an ISO 8601 / RFC 3339 time
// (the newest point in time at or before it). Delta end times increase with sequence number
// (backup enforces it), so a time is found by binary search, reading O(log n) deltas.

import { NoPointInTimeError, UsageError } from '../errors.js';
import type { Delta } from '../model/pit-map.js';
import type { Repository } from '../repo/repository.js';

export type PointSelector = { kind: 'latest' } | { kind: 'seq'; seq: number } | { kind: 'time'; time: number; text: string };

// RFC 3339 / ISO 8601 with a date, optionally a time, and a zone (Z or ±hh:mm) when a time is given.
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:Z|[+-](\d{2}):?(\d{2})))?$/i;

/**
 * Why the fields of an ISO time name no real instant, or undefined if they do. Date.parse
 * rolls them over instead (2026-02-30 is March 2, T24:00 the next day).
 */
function impossible(fields: Array<string | undefined>): string | undefined {
  const [year, month, day, hour, minute, second, zoneHours, zoneMinutes] = fields.map((f) => (f === undefined ? 0 : Number(f)));
  if (month! < 1 || month! > 12) return `there is no month ${month}`;
  const leap = year! % 4 === 0 && (year! % 100 !== 0 || year! % 400 === 0);
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month! - 1]!;
  if (day! < 1 || day! > days) return `${fields[0]}-${fields[1]} has ${days} days`;
  if (hour! > 23) return 'hours go from 00 to 23';
  if (minute! > 59 || second! > 59) return 'minutes and seconds go from 00 to 59';
  if (zoneHours! > 23 || zoneMinutes! > 59) return 'the zone offset is out of range';
  return undefined;
}

export function parsePointSelector(text: string): PointSelector {
  const value = text.trim();
  if (value === 'latest') return { kind: 'latest' };
  if (/^\d+$/.test(value)) {
    const seq = Number(value);
    if (!Number.isSafeInteger(seq) || seq < 1) throw new UsageError(`--at ${text}: sequence numbers start at 1`);
    return { kind: 'seq', seq };
  }
  const match = ISO_TIME.exec(value);
  const why = match === null ? undefined : impossible(match.slice(1));
  if (why !== undefined) {
    throw new UsageError(`--at ${JSON.stringify(text)} is not a real date and time (${why}): give an ISO 8601 time with a zone such as 2026-11-26T10:00:00Z`);
  }
  const time = match !== null ? Date.parse(value.replace(' ', 'T')) : Number.NaN;
  if (Number.isNaN(time)) {
    throw new UsageError(
      `--at ${JSON.stringify(text)} is not a point in time: give latest, a sequence number (see cdp-s3 log), or an ISO 8601 time with a zone such as 2026-11-26T10:00:00Z`,
    );
  }
  return { kind: 'time', time, text: value };
}

export interface ChosenPoint {
  seq: number;
  delta: Delta;
  /** Newer points in time at or before the request that were passed over as untrusted. */
  skipped: Array<{ seq: number; kinds: string[] }>;
  /** The chosen point itself is marked (only with allowSuspect). */
  untrusted: string[];
}

export interface ChooseOptions {
  seqs?: number[];
  now?: number;
  signal?: AbortSignal;
  /** Marks by seq (suspect after a scan, damaged after a verify): such points are passed over. */
  untrusted?: ReadonlyMap<number, ReadonlyArray<{ kind: string }>>;
  /** Take the newest point at or before the request even if it is marked. */
  allowSuspect?: boolean;
}

/** The delta that is the selected point in time. */
export async function choosePoint(repo: Repository, selector: PointSelector, options: ChooseOptions = {}): Promise<ChosenPoint> {
  const candidate = await newestAtOrBefore(repo, selector, options);
  const kindsOf = (seq: number): string[] => [...new Set((options.untrusted?.get(seq) ?? []).map((m) => m.kind))];
  if (options.allowSuspect === true || kindsOf(candidate.seq).length === 0) {
    return { ...candidate, skipped: [], untrusted: kindsOf(candidate.seq) };
  }
  const skipped: ChosenPoint['skipped'] = [];
  let seq = candidate.seq;
  for (; seq >= 1 && kindsOf(seq).length > 0; seq--) skipped.push({ seq, kinds: kindsOf(seq) });
  candidate.delta.changed.dispose();
  if (seq === 0) {
    throw new NoPointInTimeError(
      `every point in time at or before ${candidate.seq} is marked untrusted (${skipped.map((s) => `${s.seq} ${s.kinds.join('+')}`).join(', ')}): ` +
        'see cdp-s3 log; pass --allow-suspect to restore one anyway',
    );
  }
  return { seq, delta: await repo.readDelta(seq, options.signal), skipped, untrusted: [] };
}

/** The newest point in time at or before the selector, marked or not. */
async function newestAtOrBefore(repo: Repository, selector: PointSelector, options: ChooseOptions): Promise<{ seq: number; delta: Delta }> {
  const seqs = options.seqs ?? (await repo.deltaSeqs(options.signal));
  const last = seqs.at(-1);
  if (last === undefined) throw new NoPointInTimeError(`${repo.store.location} has no points in time yet: run cdp-s3 backup first`);
  const read = (seq: number): Promise<Delta> => repo.readDelta(seq, options.signal);

  if (selector.kind === 'latest') return { seq: last, delta: await read(last) };
  if (selector.kind === 'seq') {
    if (selector.seq > last) throw new NoPointInTimeError(`no point in time ${selector.seq}: the newest is ${last}`);
    return { seq: selector.seq, delta: await read(selector.seq) };
  }
  const now = options.now ?? Date.now();
  if (selector.time > now) {
    throw new NoPointInTimeError(`--at ${selector.text} is in the future; use latest for the newest point in time`);
  }
  const first = await read(1);
  if (selector.time < first.end) {
    throw new NoPointInTimeError(`--at ${selector.text} is before the first point in time (${new Date(first.end).toISOString()})`);
  }
  // Largest seq whose end <= time.
  let lo = 1;
  let loDelta = first;
  let hi = last;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    const delta = await read(mid);
    if (delta.end <= selector.time) {
      lo = mid;
      loDelta.changed.dispose();
      loDelta = delta;
    } else {
      hi = mid - 1;
      delta.changed.dispose();
    }
  }
  return { seq: lo, delta: loDelta };
}
