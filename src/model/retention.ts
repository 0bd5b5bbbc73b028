// Which points in time a retention policy keeps, with restic's meanings (`forget --keep-*`):
// the newest point is always kept; --keep-last N keeps the N newest; --keep-within D keeps every
// point within D of the newest; each calendar rule keeps, walking from the newest point back, the
// newest point of each of its N most recent buckets that hold a point (a bucket with no point
// costs nothing). Buckets are calendar units in UTC, so a policy means the same on every host;
// weeks are ISO weeks. Pure: no I/O, no clock (time is the points' own).

import { InvalidArgumentError } from '../errors.js';

export const CALENDAR_RULES = ['secondly', 'minutely', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const;
export type CalendarRule = (typeof CALENDAR_RULES)[number];

export interface RetentionPolicy {
  /** Keep the N newest points. */
  last?: number;
  /** Keep every point whose time is within this many milliseconds of the newest point's. */
  withinMs?: number;
  /** Keep the newest point of each of the N newest buckets of this unit that hold a point. */
  calendar?: Partial<Record<CalendarRule, number>>;
  /** Keep these points by sequence number, whatever the rules say. */
  seqs?: readonly number[];
}

export interface PointTime {
  seq: number;
  /** Milliseconds since the epoch. */
  time: number;
}

export type KeepReason = 'newest' | 'last' | 'within' | CalendarRule | 'seq' | 'unknown-time';

export interface RetentionDecision {
  /** Kept points, newest first, each with every rule that keeps it. */
  keep: { seq: number; reasons: KeepReason[] }[];
  /** Removed points' sequence numbers, newest first. */
  remove: number[];
}

function checkCount(value: number | undefined, option: string): void {
  if (value === undefined) return;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${option} must be a whole number of at least 1, not ${String(value)}`);
  }
}

/** Validates a policy up front: every count ≥ 1, durations > 0, and at least one rule. */
export function checkRetentionPolicy(policy: RetentionPolicy): void {
  checkCount(policy.last, '--keep-last');
  if (policy.withinMs !== undefined && !(Number.isFinite(policy.withinMs) && policy.withinMs > 0)) {
    throw new InvalidArgumentError(`--keep-within must be a positive duration, not ${String(policy.withinMs)} ms`);
  }
  for (const rule of CALENDAR_RULES) checkCount(policy.calendar?.[rule], `--keep-${rule}`);
  for (const seq of policy.seqs ?? []) {
    if (!Number.isSafeInteger(seq) || seq < 1) throw new InvalidArgumentError(`--keep-seq takes point sequence numbers, not ${String(seq)}`);
  }
  const calendarRules = CALENDAR_RULES.filter((rule) => policy.calendar?.[rule] !== undefined);
  if (policy.last === undefined && policy.withinMs === undefined && calendarRules.length === 0 && (policy.seqs ?? []).length === 0) {
    throw new InvalidArgumentError(
      'an empty retention policy would keep only the newest point: pass at least one --keep-last, --keep-within, --keep-<unit> or --keep-seq',
    );
  }
}

/** ISO 8601 week-numbering year and week of a UTC time, as year * 100 + week. */
function isoWeek(time: number): number {
  const date = new Date(time);
  const day = (date.getUTCDay() + 6) % 7; // Monday 0 … Sunday 6
  // The week's Thursday decides its year.
  const thursday = Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate() - day + 3);
  const year = new Date(thursday).getUTCFullYear();
  const week = Math.floor((thursday - Date.UTC(year, 0, 1)) / (7 * 86_400_000)) + 1;
  return year * 100 + week;
}

/** The bucket a time falls into for a calendar rule: equal numbers, same bucket. */
export function calendarBucket(rule: CalendarRule, time: number): number {
  const date = new Date(time);
  const y = date.getUTCFullYear();
  const mo = date.getUTCMonth();
  switch (rule) {
    case 'secondly':
      return Math.floor(time / 1000);
    case 'minutely':
      return Math.floor(time / 60_000);
    case 'hourly':
      return Math.floor(time / 3_600_000);
    case 'daily':
      return Math.floor(time / 86_400_000);
    case 'weekly':
      return isoWeek(time);
    case 'monthly':
      return y * 12 + mo;
    case 'yearly':
      return y;
  }
}

/**
 * Decides which points a policy keeps. `points` may come in any order; sequence numbers are
 * unique and a later seq is never older (the chain's order decides ties of time).
 */
export function applyRetention(points: readonly PointTime[], policy: RetentionPolicy): RetentionDecision {
  checkRetentionPolicy(policy);
  const newestFirst = [...points].sort((a, b) => b.seq - a.seq);
  const keep: RetentionDecision['keep'] = [];
  const remove: number[] = [];
  if (newestFirst.length === 0) return { keep, remove };

  const newestTime = newestFirst[0]!.time;
  const wanted = new Set(policy.seqs ?? []);
  let lastLeft = policy.last ?? 0;
  const calendarLeft = new Map<CalendarRule, { left: number; bucket: number | undefined }>();
  for (const rule of CALENDAR_RULES) {
    const n = policy.calendar?.[rule];
    if (n !== undefined) calendarLeft.set(rule, { left: n, bucket: undefined });
  }

  newestFirst.forEach((point, index) => {
    const reasons: KeepReason[] = [];
    if (index === 0) reasons.push('newest');
    if (lastLeft > 0) {
      lastLeft--;
      reasons.push('last');
    }
    if (policy.withinMs !== undefined && newestTime - point.time <= policy.withinMs) reasons.push('within');
    for (const [rule, state] of calendarLeft) {
      if (state.left === 0) continue;
      const bucket = calendarBucket(rule, point.time);
      if (bucket !== state.bucket) {
        state.bucket = bucket;
        state.left--;
        reasons.push(rule);
      }
    }
    if (wanted.has(point.seq)) reasons.push('seq');
    if (reasons.length > 0) keep.push({ seq: point.seq, reasons });
    else remove.push(point.seq);
  });
  return { keep, remove };
}

/**
 * The points in time removed from a history: disjoint inclusive ranges of seqs. Lookups are
 * O(log ranges), so skipping a long forgotten stretch costs one step, not one per point.
 */
export class ForgottenSet {
  /** Ascending, disjoint, not adjacent. */
  private readonly ranges: Array<[number, number]>;

  constructor(ranges: Iterable<readonly [number, number]> = []) {
    const sorted = [...ranges].map(([a, b]): [number, number] => [a, b]).sort((x, y) => x[0] - y[0]);
    const merged: Array<[number, number]> = [];
    for (const [a, b] of sorted) {
      const last = merged.at(-1);
      if (last !== undefined && a <= last[1] + 1) last[1] = Math.max(last[1], b);
      else merged.push([a, b]);
    }
    this.ranges = merged;
  }

  /** The ranges of seqs a sorted list makes. */
  static rangesOf(seqs: readonly number[]): Array<[number, number]> {
    const sorted = [...seqs].sort((a, b) => a - b);
    const out: Array<[number, number]> = [];
    for (const seq of sorted) {
      const last = out.at(-1);
      if (last !== undefined && seq === last[1] + 1) last[1] = seq;
      else if (last === undefined || seq > last[1]) out.push([seq, seq]);
    }
    return out;
  }

  get size(): number {
    return this.ranges.reduce((n, [a, b]) => n + b - a + 1, 0);
  }

  get list(): ReadonlyArray<readonly [number, number]> {
    return this.ranges;
  }

  /** The range holding seq, if any. */
  private rangeOf(seq: number): [number, number] | undefined {
    let lo = 0;
    let hi = this.ranges.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const [a, b] = this.ranges[mid]!;
      if (seq < a) hi = mid - 1;
      else if (seq > b) lo = mid + 1;
      else return this.ranges[mid];
    }
    return undefined;
  }

  has(seq: number): boolean {
    return this.rangeOf(seq) !== undefined;
  }

  /** The newest seq at or before `seq` that is not forgotten (0: none). */
  keptAtOrBefore(seq: number): number {
    const range = this.rangeOf(seq);
    return range === undefined ? seq : range[0] - 1;
  }

  /** The oldest seq at or after `seq` that is not forgotten. */
  keptAtOrAfter(seq: number): number {
    const range = this.rangeOf(seq);
    return range === undefined ? seq : range[1] + 1;
  }

  /** The seqs in [from, to] that are not forgotten, ascending; a forgotten range is stepped over in one step. */
  *keptSeqs(from: number, to: number): Generator<number> {
    for (let seq = this.keptAtOrAfter(from); seq <= to; seq = this.keptAtOrAfter(seq + 1)) yield seq;
  }

  /** The newest seq before `seq` that is not forgotten (0: none). */
  keptBefore(seq: number): number {
    return seq <= 1 ? 0 : this.keptAtOrBefore(seq - 1);
  }

  /** Every seq in [from, to] is forgotten. */
  coversAll(from: number, to: number): boolean {
    return this.keptAtOrAfter(from) > to;
  }

  /** The same set as `other` (compared as ranges). */
  equals(other: ForgottenSet): boolean {
    return this.ranges.length === other.ranges.length && this.ranges.every(([a, b], i) => a === other.ranges[i]![0] && b === other.ranges[i]![1]);
  }

  /** The forgotten seqs in [from, to], ascending, as ranges. */
  within(from: number, to: number): Array<[number, number]> {
    return this.ranges.filter(([a, b]) => b >= from && a <= to).map(([a, b]): [number, number] => [Math.max(a, from), Math.min(b, to)]);
  }
}
