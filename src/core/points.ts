// Choosing a point in time: `latest`, a sequence number, or an ISO 8601 / RFC 3339 time
// (the newest point in time at or before it). Delta end times increase with sequence number
// (backup enforces it), so a time is found by binary search, reading O(log n) deltas.

import { NoPointInTimeError, UsageError } from '../errors.js';
import type { Delta } from '../model/pit-map.js';
import { type ChainListing, ChainGapError, type Repository } from '../repo/repository.js';
import type { UnreadableMarks } from '../repo/trust.js';

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
  /**
   * Newer points in time at or before the request that were passed over: untrusted ones
   * (`suspect`, `damaged`, or `marks-unreadable`: a marks object that could concern the point
   * cannot be read), and ones that cannot be built (`missing`: the delta itself is missing;
   * `unrestorable`: a delta before it is missing and no checkpoint stands in for it).
   */
  skipped: Array<{ seq: number; kinds: string[] }>;
  /** The chosen point itself is marked (only with allowSuspect). */
  untrusted: string[];
}

export interface ChooseOptions {
  /** The chain as listed (one LIST each of deltas/ and checkpoints/ otherwise). */
  chain?: ChainListing;
  now?: number;
  signal?: AbortSignal;
  /** Marks by seq (suspect after a scan, damaged after a verify): such points are passed over. */
  untrusted?: ReadonlyMap<number, ReadonlyArray<{ kind: string }>>;
  /**
   * Marks objects that cannot be read (what their keys say: Trust.unreadable): every point they
   * may concern (unreadableConcerns) is passed over like a marked one.
   */
  unreadableMarks?: ReadonlyArray<Pick<UnreadableMarks, 'time' | 'seq'>>;
  /** Take the newest point at or before the request even if it is marked. */
  allowSuspect?: boolean;
}

/** The delta that is the selected point in time. */
export async function choosePoint(repo: Repository, selector: PointSelector, options: ChooseOptions = {}): Promise<ChosenPoint> {
  const chain = options.chain ?? (await repo.listChain(options.signal));
  const candidate = await newestAtOrBefore(repo, chain, selector, options);
  // Points at or before this one may be marked by a marks object nobody can read.
  let unknownUntil = 0;
  // (Concerned points are always a prefix of the chain: up to a seq, or up to a time.)
  for (const { seq, time } of options.unreadableMarks ?? []) {
    const until = seq !== undefined ? Math.min(seq, chain.latest) : time !== undefined ? await lastAtOrBefore(repo, chain, time, options.signal) : chain.latest;
    unknownUntil = Math.max(unknownUntil, until);
  }
  const marksOf = (seq: number): string[] => {
    const kinds = new Set((options.untrusted?.get(seq) ?? []).map((m) => m.kind));
    if (seq <= unknownUntil) kinds.add('marks-unreadable');
    return [...kinds];
  };
  const reasonsOf = (seq: number): string[] => {
    const gap = chain.blockedBy(seq);
    if (gap === seq) return ['missing'];
    if (gap !== undefined) return ['unrestorable'];
    return options.allowSuspect === true ? [] : marksOf(seq);
  };
  if (reasonsOf(candidate.seq).length === 0) {
    return { seq: candidate.seq, delta: candidate.delta!, skipped: [], untrusted: marksOf(candidate.seq) };
  }
  const skipped: ChosenPoint['skipped'] = [];
  let seq = candidate.seq;
  for (; seq >= 1 && reasonsOf(seq).length > 0; seq--) skipped.push({ seq, kinds: reasonsOf(seq) });
  candidate.delta?.changed.dispose();
  if (seq === 0) {
    const gap = [...skipped].reverse().find((s) => s.kinds.includes('missing'))?.seq; // the oldest
    const marked = skipped.some((s) => !s.kinds.includes('missing') && !s.kinds.includes('unrestorable'));
    // Nothing usable because of a lost delta is damage (exit 7); because of marks, a choice to make.
    if (gap !== undefined && !marked) throw new ChainGapError(gap, candidate.seq);
    const what = gap === undefined ? 'is marked untrusted' : 'is marked untrusted or cannot be built';
    throw new NoPointInTimeError(
      `every point in time at or before ${candidate.seq} ${what} (${describeSkipped(skipped)}): ` +
        'see cdp-s3 log; pass --allow-suspect to restore a marked one anyway',
    );
  }
  return { seq, delta: await repo.readDelta(seq, options.signal), skipped, untrusted: options.allowSuspect === true ? marksOf(seq) : [] };
}

/** Skipped points, runs of neighbours with the same reasons as one range: `9-5 unrestorable, 4 missing`. */
export function describeSkipped(skipped: ReadonlyArray<{ seq: number; kinds: string[] }>): string {
  const parts: string[] = [];
  for (let i = 0; i < skipped.length; ) {
    let j = i;
    const kinds = skipped[i]!.kinds.join('+');
    while (j + 1 < skipped.length && skipped[j + 1]!.seq === skipped[j]!.seq - 1 && skipped[j + 1]!.kinds.join('+') === kinds) j++;
    parts.push(`${j === i ? skipped[i]!.seq : `${skipped[i]!.seq}-${skipped[j]!.seq}`} ${kinds}`);
    i = j + 1;
  }
  return parts.join(', ');
}

/**
 * The newest point in time at or before the selector, marked or not. With a sequence number it
 * may be a missing delta (no `delta` then); otherwise it is a stored one.
 */
async function newestAtOrBefore(repo: Repository, chain: ChainListing, selector: PointSelector, options: ChooseOptions): Promise<{ seq: number; delta: Delta | undefined }> {
  const last = chain.seqs.at(-1);
  if (last === undefined) throw new NoPointInTimeError(`${repo.store.location} has no points in time yet: run cdp-s3 backup first`);
  const read = (seq: number): Promise<Delta> => repo.readDelta(seq, options.signal);

  if (selector.kind === 'latest') return { seq: last, delta: await read(last) };
  if (selector.kind === 'seq') {
    if (selector.seq > last) throw new NoPointInTimeError(`no point in time ${selector.seq}: the newest is ${last}`);
    return { seq: selector.seq, delta: chain.has(selector.seq) ? await read(selector.seq) : undefined };
  }
  const now = options.now ?? Date.now();
  if (selector.time > now) {
    throw new NoPointInTimeError(`--at ${selector.text} is in the future; use latest for the newest point in time`);
  }
  const found = await searchByTime(repo, chain, selector.time, options.signal);
  if (found === undefined) {
    const first = await read(chain.seqs[0]!);
    first.changed.dispose();
    throw new NoPointInTimeError(`--at ${selector.text} is before the first point in time (${new Date(first.end).toISOString()})`);
  }
  return found;
}

/** The newest stored point whose end is at or before `time` (0 if none). */
async function lastAtOrBefore(repo: Repository, chain: ChainListing, time: number, signal?: AbortSignal): Promise<number> {
  const found = await searchByTime(repo, chain, time, signal);
  found?.delta.changed.dispose();
  return found?.seq ?? 0;
}

/** Binary search over the stored deltas (ends grow with seq): the largest seq whose end <= time. */
async function searchByTime(repo: Repository, chain: ChainListing, time: number, signal?: AbortSignal): Promise<{ seq: number; delta: Delta } | undefined> {
  const seqs = chain.seqs;
  const first = await repo.readDelta(seqs[0]!, signal);
  if (time < first.end) {
    first.changed.dispose();
    return undefined;
  }
  let lo = 0;
  let loDelta = first;
  let hi = seqs.length - 1;
  while (lo < hi) {
    const mid = Math.ceil((lo + hi) / 2);
    const delta = await repo.readDelta(seqs[mid]!, signal);
    if (delta.end <= time) {
      lo = mid;
      loDelta.changed.dispose();
      loDelta = delta;
    } else {
      hi = mid - 1;
      delta.changed.dispose();
    }
  }
  return { seq: seqs[lo]!, delta: loDelta };
}
