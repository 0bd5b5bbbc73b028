// Choosing a point in time: `latest`, a sequence number, or an ISO 8601 / RFC 3339 time
// (the newest point in time at or before it). Point end times increase with sequence number
// (writers enforce it), so a time is found by binary search over the points' summaries, which
// spans keep for all the points they cover: O(log n) requests.

import { NoPointInTimeError, UsageError } from '../errors.js';
import { type ChainIndex, ChainGapError } from '../repo/chain-index.js';
import type { Repository } from '../repo/repository.js';
import type { PointSummary } from '../repo/run-codec.js';

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

/** `option` names the flag in errors (`--at` for restore and serve, `--since` for log). */
export function parsePointSelector(text: string, option = '--at'): PointSelector {
  const value = text.trim();
  if (value === 'latest') return { kind: 'latest' };
  if (/^\d+$/.test(value)) {
    const seq = Number(value);
    if (!Number.isSafeInteger(seq) || seq < 1) throw new UsageError(`${option} ${text}: sequence numbers start at 1`);
    return { kind: 'seq', seq };
  }
  const match = ISO_TIME.exec(value);
  const why = match === null ? undefined : impossible(match.slice(1));
  if (why !== undefined) {
    throw new UsageError(`${option} ${JSON.stringify(text)} is not a real date and time (${why}): give an ISO 8601 time with a zone such as 2026-11-26T10:00:00Z`);
  }
  const time = match !== null ? Date.parse(value.replace(' ', 'T')) : Number.NaN;
  if (Number.isNaN(time)) {
    throw new UsageError(
      `${option} ${JSON.stringify(text)} is not a point in time: give latest, a sequence number (see cdp-s3 log), or an ISO 8601 time with a zone such as 2026-11-26T10:00:00Z`,
    );
  }
  return { kind: 'time', time, text: value };
}

export interface ChosenPoint {
  seq: number;
  summary: PointSummary;
  /** Where the primary was read for this point, when its delta says. */
  source: { host: string; path: string } | undefined;
  /**
   * Newer points in time at or before the request that were passed over: untrusted ones
   * (`suspect`, `damaged`, or `marks-unreadable`: a marks object that could concern the point
   * cannot be read), and ones that cannot be built (`missing`: the delta itself is missing;
   * `unrestorable`: a delta before it is missing and no span stands in for it).
   */
  skipped: Array<{ seq: number; kinds: string[] }>;
  /** The chosen point itself is marked (only with allowSuspect). */
  untrusted: string[];
}

export interface ChooseOptions {
  now?: number;
  signal?: AbortSignal;
  /** Marks by seq (suspect after a scan, damaged after a verify): such points are passed over. */
  untrusted?: ReadonlyMap<number, ReadonlyArray<{ kind: string }>>;
  /** Every point at or before this one may be marked by a marks object nobody can read (0: none). */
  unreadableUntil?: number;
  /** Take the newest point at or before the request even if it is marked. */
  allowSuspect?: boolean;
}

/** The point in time the selector picks, stepping back over untrusted and unbuildable ones. */
export async function choosePoint(repo: Repository, index: ChainIndex, selector: PointSelector, options: ChooseOptions = {}): Promise<ChosenPoint> {
  const candidate = await newestAtOrBefore(repo, index, selector, options);
  const marksOf = (seq: number): string[] => {
    const kinds = new Set((options.untrusted?.get(seq) ?? []).map((m) => m.kind));
    if (seq <= (options.unreadableUntil ?? 0)) kinds.add('marks-unreadable');
    return [...kinds];
  };
  const reasonsOf = async (seq: number): Promise<string[]> => {
    const gap = await index.blockedBy(seq, options.signal);
    if (gap === seq) return ['missing'];
    if (gap !== undefined) return ['unrestorable'];
    return options.allowSuspect === true ? [] : marksOf(seq);
  };
  const skipped: ChosenPoint['skipped'] = [];
  let seq = candidate;
  for (; seq >= 1; seq--) {
    seq = index.forgotten.keptAtOrBefore(seq); // forgotten points are not points: passed over silently
    if (seq === 0) break;
    const reasons = await reasonsOf(seq);
    if (reasons.length === 0) break;
    skipped.push({ seq, kinds: reasons });
  }
  if (seq === 0) {
    const gap = [...skipped].reverse().find((s) => s.kinds.includes('missing'))?.seq; // the oldest
    const marked = skipped.some((s) => !s.kinds.includes('missing') && !s.kinds.includes('unrestorable'));
    // Nothing usable because of a lost delta is damage (exit 7); because of marks, a choice to make.
    if (gap !== undefined && !marked) throw new ChainGapError(gap, candidate);
    const what = gap === undefined ? 'is marked untrusted' : 'is marked untrusted or cannot be built';
    throw new NoPointInTimeError(
      `every point in time at or before ${candidate} ${what} (${describeSkipped(skipped)}): ` + 'see cdp-s3 log; pass --allow-suspect to restore a marked one anyway',
    );
  }
  const summary = await repo.summary(index, seq, options.signal);
  return { seq, summary, source: await sourceOf(repo, index, seq, options.signal), skipped, untrusted: options.allowSuspect === true ? marksOf(seq) : [] };
}

/** Where the primary was read for point `seq`, from its delta (undefined when unknown). */
async function sourceOf(repo: Repository, index: ChainIndex, seq: number, signal?: AbortSignal): Promise<{ host: string; path: string } | undefined> {
  const block = await index.stored(0, seq, signal);
  if (block === undefined) return undefined;
  return (await repo.readRun(block, signal)).root.delta?.source;
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

/** The newest point in time at or before the selector, marked, missing or not. */
async function newestAtOrBefore(repo: Repository, index: ChainIndex, selector: PointSelector, options: ChooseOptions): Promise<number> {
  const last = index.latest;
  if (last === 0) throw new NoPointInTimeError(`${repo.store.location} has no points in time yet: run cdp-s3 backup first`);
  if (selector.kind === 'latest') return last;
  if (selector.kind === 'seq') {
    if (selector.seq > last) throw new NoPointInTimeError(`no point in time ${selector.seq}: the newest is ${last}`);
    if (index.forgotten.has(selector.seq)) {
      const before = index.forgotten.keptAtOrBefore(selector.seq);
      throw new NoPointInTimeError(
        `point in time ${selector.seq} was removed by cdp-s3 forget; the nearest kept ones are ${before === 0 ? 'none before it' : before} and ${index.forgotten.keptAtOrAfter(selector.seq)} (see cdp-s3 log)`,
      );
    }
    return selector.seq;
  }
  const now = options.now ?? Date.now();
  if (selector.time > now) {
    throw new NoPointInTimeError(`--at ${selector.text} is in the future; use latest for the newest point in time`);
  }
  const found = await lastAtOrBefore(repo, index, selector.time, options.signal);
  if (found === 0) {
    const first = await endOf(repo, index, 1, options.signal);
    throw new NoPointInTimeError(`--at ${selector.text} is before the first point in time${first === undefined ? '' : ` (${new Date(first).toISOString()})`}`);
  }
  return found;
}

/** When point `seq` ended, or undefined if nothing says (its delta and every span over it lost). */
async function endOf(repo: Repository, index: ChainIndex, seq: number, signal?: AbortSignal): Promise<number | undefined> {
  try {
    return (await repo.summary(index, seq, signal)).end;
  } catch (error) {
    if (error instanceof ChainGapError) return undefined;
    throw error;
  }
}

/**
 * The newest point whose end is at or before `time` (0 if none): binary search over seq. A point
 * nothing can tell the end of is searched past (treated as the nearest known point before it).
 */
export async function lastAtOrBefore(repo: Repository, index: ChainIndex, time: number, signal?: AbortSignal): Promise<number> {
  let lo = 0; // end(lo) <= time (0: before every point)
  let hi = index.latest + 1; // end(hi) > time (latest + 1: after every point)
  while (hi - lo > 1) {
    // Only points that are kept are probed: a forgotten stretch is stepped over whole.
    let mid = index.forgotten.keptAtOrBefore(Math.floor((lo + hi) / 2));
    if (mid <= lo) {
      mid = index.forgotten.keptAtOrAfter(Math.floor((lo + hi) / 2) + 1);
      if (mid >= hi) break;
    }
    let end = await endOf(repo, index, mid, signal);
    // A point with no summary left: try its neighbours towards lo.
    while (end === undefined && mid - 1 > lo) end = await endOf(repo, index, --mid, signal);
    if (end === undefined) break;
    if (end <= time) lo = mid;
    else hi = mid;
  }
  return lo;
}
