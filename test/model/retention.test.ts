import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { applyRetention, calendarBucket, CALENDAR_RULES, ForgottenSet, type PointTime } from '../../src/model/retention.js';

const HOUR = 3_600_000;
const t0 = Date.UTC(2026, 11, 7, 0, 0, 0);

function points(times: number[]): PointTime[] {
  return times.map((time, index) => ({ seq: index + 1, time }));
}

function kept(decision: ReturnType<typeof applyRetention>): number[] {
  return decision.keep.map((k) => k.seq);
}

describe('retention policy', () => {
  it('refuses an empty policy and counts or durations out of range, naming the option', () => {
    expect(() => applyRetention([], {})).toThrow(/empty retention policy.*--keep-last/);
    expect(() => applyRetention([], { last: 0 })).toThrow(/--keep-last must be a whole number of at least 1/);
    expect(() => applyRetention([], { calendar: { hourly: 1.5 } })).toThrow(/--keep-hourly/);
    expect(() => applyRetention([], { withinMs: -5 })).toThrow(/--keep-within must be a positive duration/);
    expect(() => applyRetention([], { seqs: [-1] })).toThrow(/--keep-seq/);
    expect(() => applyRetention([], { last: 0 })).toThrow(InvalidArgumentError);
  });

  it('always keeps the newest point; --keep-last N keeps the N newest', () => {
    const history = points([0, 1, 2, 3, 4, 5].map((i) => t0 + i * 1000));
    expect(kept(applyRetention(history, { seqs: [2] }))).toEqual([6, 2]);
    const decision = applyRetention(history, { last: 3 });
    expect(kept(decision)).toEqual([6, 5, 4]);
    expect(decision.remove).toEqual([3, 2, 1]);
    expect(decision.keep[0]!.reasons).toEqual(['newest', 'last']);
  });

  it('--keep-within counts back from the newest point, not from now', () => {
    const history = points([t0, t0 + HOUR, t0 + 2 * HOUR, t0 + 2 * HOUR + 1]);
    expect(kept(applyRetention(history, { withinMs: HOUR }))).toEqual([4, 3]);
    expect(kept(applyRetention(history, { withinMs: HOUR + 1 }))).toEqual([4, 3, 2]);
  });

  it('a calendar bucket with no point costs nothing; each kept point is its bucket\'s newest', () => {
    // Points in hours 0, 1 (twice), 5 and 6: --keep-hourly 3 keeps hour 6, hour 5, and hour 1's newest.
    const history = points([t0, t0 + HOUR + 10, t0 + HOUR + 20, t0 + 5 * HOUR, t0 + 6 * HOUR]);
    const decision = applyRetention(history, { calendar: { hourly: 3 } });
    expect(kept(decision)).toEqual([5, 4, 3]);
    expect(decision.keep.map((k) => k.reasons)).toEqual([['newest', 'hourly'], ['hourly'], ['hourly']]);
  });

  it('weeks are ISO weeks in UTC: the days around a new year fall into the right week', () => {
    expect(calendarBucket('weekly', Date.UTC(2026, 11, 31))).toBe(202653); // Thursday
    expect(calendarBucket('weekly', Date.UTC(2027, 0, 3, 23, 59))).toBe(202653); // Sunday
    expect(calendarBucket('weekly', Date.UTC(2027, 0, 4))).toBe(202701); // Monday
    expect(calendarBucket('weekly', Date.UTC(2024, 11, 30))).toBe(202501); // Monday of 2025-W01
    expect(calendarBucket('monthly', Date.UTC(2027, 0, 1))).not.toBe(calendarBucket('monthly', Date.UTC(2026, 11, 31, 23, 59, 59)));
    expect(calendarBucket('daily', Date.UTC(2026, 11, 7, 23, 59))).toBe(calendarBucket('daily', Date.UTC(2026, 11, 7)));
  });

  it('random histories: each calendar rule keeps the newest point of exactly its N newest non-empty buckets', () => {
    let state = 0x2545f491;
    const random = (n: number): number => {
      state ^= state << 13;
      state ^= state >>> 17;
      state ^= state << 5;
      return (state >>> 0) % n;
    };
    const spans: Record<(typeof CALENDAR_RULES)[number], number> = {
      secondly: 1000,
      minutely: 60_000,
      hourly: HOUR,
      daily: 24 * HOUR,
      weekly: 7 * 24 * HOUR,
      monthly: 30 * 24 * HOUR,
      yearly: 365 * 24 * HOUR,
    };
    for (let trial = 0; trial < 200; trial++) {
      const rule = CALENDAR_RULES[random(CALENDAR_RULES.length)]!;
      let time = t0;
      const times: number[] = [];
      const count = 1 + random(300);
      for (let i = 0; i < count; i++) {
        time += random(Math.floor(spans[rule] / 4) + 1) * (random(8) === 0 ? 9 : 1);
        times.push(time);
      }
      const history = points(times);
      const n = 1 + random(12);
      const decision = applyRetention(history, { calendar: { [rule]: n } });

      // Group by bucket; the expected keep is the newest point of each of the n newest buckets.
      const newestOfBucket = new Map<number, number>();
      for (const p of history) {
        const bucket = calendarBucket(rule, p.time);
        newestOfBucket.set(bucket, Math.max(newestOfBucket.get(bucket) ?? 0, p.seq));
      }
      const expected = [...newestOfBucket.entries()].sort((a, b) => b[0] - a[0]).slice(0, n).map(([, seq]) => seq);
      const byRule = decision.keep.filter((k) => k.reasons.includes(rule)).map((k) => k.seq);
      expect(byRule).toEqual(expected);
      expect(kept(decision)).toEqual(expected); // the newest is always its bucket's newest
      expect(decision.keep.length + decision.remove.length).toBe(history.length);
    }
  });

  it('a forgotten set merges touching ranges and steps over them whole', () => {
    const set = new ForgottenSet([[5, 7], [1, 2], [8, 9], [20, 20]]);
    expect(set.list).toEqual([[1, 2], [5, 9], [20, 20]]);
    expect(set.size).toBe(8);
    expect([set.has(2), set.has(3), set.has(9), set.has(10)]).toEqual([true, false, true, false]);
    expect([set.keptAtOrBefore(2), set.keptAtOrBefore(8), set.keptAtOrAfter(5), set.keptAtOrAfter(20)]).toEqual([0, 4, 10, 21]);
    expect([...set.keptSeqs(1, 22)]).toEqual([3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 21, 22]);
    expect(set.within(6, 20)).toEqual([[6, 9], [20, 20]]);
    expect(ForgottenSet.rangesOf([9, 3, 4, 5, 9, 1])).toEqual([[1, 1], [3, 5], [9, 9]]);
  });
});
