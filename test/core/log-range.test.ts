import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseLogQuery } from '../../src/cli/log.js';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { log, summarizeLog } from '../../src/core/log.js';
import { CountingStore } from '../../src/store/counting.js';
import { openStore } from '../../src/store/open.js';
import type { ObjectStore } from '../../src/store/types.js';
import { makeImage, mutateImage } from '../helpers/images.js';

const MINUTE = 60_000;
const t0 = Date.UTC(2026, 11, 6, 22, 0, 0);
const POINTS = 40;

let dir: string;
let store: ObjectStore;
/** Point seq's time: every 10 minutes from 22:00 on 6 December, so the history spans two days. */
const timeOf = (seq: number): number => t0 + (seq - 1) * 10 * MINUTE;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-log-'));
  const regionSize = 64 * 1024;
  const image = makeImage({ size: 4 * regionSize, regionSize, seed: 11 });
  const source = join(dir, 'disk.img');
  await writeFile(source, image);
  store = openStore(join(dir, 'repo'));
  await init({ store, from: source, regionSize, spanFanout: 4 });
  for (let seq = 1; seq <= POINTS; seq++) {
    if (seq > 1) {
      mutateImage(image, 1, seq);
      await writeFile(source, image);
    }
    const result = await backup({ store, source, clock: () => timeOf(seq) });
    expect(result.seq).toBe(seq);
  }
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('log of part of a long history', () => {
  it('--since a sequence number or a time, --last N, and both', async () => {
    const bySeq = await log({ store, since: { seq: 30 } });
    expect(bySeq.entries.map((e) => e.seq)).toEqual(Array.from({ length: 11 }, (_, i) => 30 + i));
    expect(bySeq.first).toBe(30);
    expect(bySeq.latest).toBe(POINTS);

    // Between points 12 and 13: the first point at or after the time is 13; exactly at 13's time, too.
    expect((await log({ store, since: { time: timeOf(12) + 1 } })).first).toBe(13);
    expect((await log({ store, since: { time: timeOf(13) } })).first).toBe(13);
    expect((await log({ store, since: { time: timeOf(1) - MINUTE } })).entries).toHaveLength(POINTS);
    const after = await log({ store, since: { time: timeOf(POINTS) + 1 } });
    expect(after.entries).toEqual([]);

    expect((await log({ store, last: 3 })).entries.map((e) => e.seq)).toEqual([38, 39, 40]);
    expect((await log({ store, since: { seq: 39 }, last: 5 })).entries.map((e) => e.seq)).toEqual([39, 40]);
    expect((await log({ store, since: { seq: 10 }, last: 2 })).entries.map((e) => e.seq)).toEqual([39, 40]);
  });

  it('the points before the range are not read: a short view costs fewer reads than the whole log', async () => {
    const all = new CountingStore(store);
    await log({ store: all });
    const recent = new CountingStore(store);
    await log({ store: recent, last: 2 });
    expect(recent.gets).toBeLessThan(all.gets);
  });

  it('--summary groups the points by UTC hour or day, leaving out the empty ones', async () => {
    const { entries } = await log({ store });
    const days = summarizeLog(entries, 'day');
    // 22:00 on the 6th to 04:30 on the 7th: 12 points on the 6th, 28 on the 7th.
    expect(days.map((d) => [d.start, d.points, d.firstSeq, d.lastSeq])).toEqual([
      ['2026-12-06T00:00:00.000Z', 12, 1, 12],
      ['2026-12-07T00:00:00.000Z', 28, 13, 40],
    ]);
    expect(days[0]!.kinds).toEqual({ base: 1, host: 11, fixup: 0 });
    expect(days.reduce((sum, d) => sum + d.bytes, 0)).toBe(entries.reduce((sum, e) => sum + e.bytes, 0));
    const hours = summarizeLog(entries, 'hour');
    expect(hours).toHaveLength(7);
    expect(hours.every((h) => h.points === 6 || h.lastSeq === POINTS)).toBe(true);
    expect(hours.at(-1)!.start).toBe('2026-12-07T04:00:00.000Z');
  });

  it('bad --since, --last and --summary are one-line usage errors naming the option', () => {
    expect(() => parseLogQuery({ last: '0' })).toThrow(/--last "0": give a whole number of points, at least 1/);
    expect(() => parseLogQuery({ last: '3x' })).toThrow(/--last/);
    expect(() => parseLogQuery({ summary: 'week' })).toThrow(/--summary "week": give hour or day/);
    expect(() => parseLogQuery({ since: 'latest' })).toThrow(/--since takes a sequence number or an ISO 8601 time/);
    expect(() => parseLogQuery({ since: 'yesterday' })).toThrow(/--since "yesterday" is not a point in time/);
    expect(() => parseLogQuery({ since: '2026-02-30T00:00:00Z' })).toThrow(/--since .* is not a real date/);
    expect(parseLogQuery({ since: '2026-12-07T01:00:00Z', last: '5', summary: 'hour' })).toEqual({
      options: { since: { time: Date.UTC(2026, 11, 7, 1) }, last: 5 },
      summary: 'hour',
    });
  });
});
