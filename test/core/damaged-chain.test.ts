// A damaged chain must not break everything: with a delta missing, the points before it restore,
// points after it restore where a span stands in for the lost link, log and status show
// the gap, and writers never fill it (nor write past it unless a span lets them).

import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { log } from '../../src/core/log.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { verify } from '../../src/core/verify.js';
import { scan } from '../../src/core/scan.js';
import { PitExport } from '../../src/core/serve.js';
import { status } from '../../src/core/status.js';
import { seqName } from '../../src/repo/keys.js';
import { cli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { flipBodyByte, snapshot } from '../helpers/raw-objects.js';
import { type ScratchRepository, useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
const REGIONS = 24;
const BUCKET = 'chain';
const fixture = useS3Fixture('chain', [BUCKET]);
let counter = 0;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

interface Fixture extends ScratchRepository {
  source: string;
  image: Buffer;
  /** Per point in time: the image's SHA-256 and the point's time. */
  points: Map<number, { digest: string; time: string }>;
}

/** Points in time 1 to 5, each rewriting one region; a span of points 1–3 (fanout 3). */
async function makeFixture(kind: 'fs' | 's3'): Promise<Fixture> {
  const n = ++counter;
  const { work, repoUrl, store, raw } = await fixture.repository(kind, BUCKET, n);
  const image = makeImage({ size: REGIONS * REGION, regionSize: REGION, seed: 100 + n, zero: 0, repeated: 0 });
  const source = join(work, 'disk.img');
  await writeFile(source, image);
  await init({ store, from: source, regionSize: REGION, packSize: 4 * REGION, spanFanout: 3 });
  const f: Fixture = { store, repoUrl, raw, source, work, image, points: new Map() };
  for (let seq = 1; seq <= 5; seq++) await change(f, seq);
  return f;
}

/** Rewrites region `seq` and backs up: point in time `seq`. */
async function change(f: Fixture, seq: number): Promise<void> {
  if (seq > 1) f.image.fill(seq, seq * REGION, seq * REGION + 3000);
  await writeFile(f.source, f.image);
  const result = await backup({ store: f.store, source: f.source, workers: 2 });
  expect(result.seq).toBe(seq);
  f.points.set(seq, { digest: sha(f.image), time: result.time });
}

async function restored(f: Fixture, at: string): Promise<{ seq: number; digest: string; skipped: string }> {
  const plan = await planRestore({ store: f.store, at: parsePointSelector(at) });
  const target = join(f.work, `r-${++counter}.img`);
  await executeRestore(plan, { to: target, workers: 2 });
  return { seq: plan.seq, digest: sha(await readFile(target)), skipped: plan.skipped.map((s) => `${s.seq} ${s.kinds.join('+')}`).join(', ') };
}

const restoresAs = (f: Fixture, seq: number, skipped = ''): { seq: number; digest: string; skipped: string } => ({
  seq,
  digest: f.points.get(seq)!.digest,
  skipped,
});

for (const kind of ['fs', 's3'] as const) {
  describe(`a missing delta (${kind} store)`, () => {
    it('points before it restore, points a span stands in for restore, the rest are passed over; log and status show it', async () => {
      const f = await makeFixture(kind);
      await f.raw.delete('deltas/0000000000000002'); // the span of 1–3 stands in for it
      await f.raw.delete('deltas/0000000000000004'); // nothing stands in for it: point 5 cannot be built

      expect(await restored(f, '1')).toEqual(restoresAs(f, 1));
      expect(await restored(f, '3')).toEqual(restoresAs(f, 3));
      expect(await restored(f, 'latest')).toEqual(restoresAs(f, 3, '5 unrestorable, 4 missing'));
      expect(await restored(f, '2')).toEqual(restoresAs(f, 1, '2 missing'));
      // By time: the newest point at or before it; a span still knows when its lost point 2 was
      // taken (and restore says it passed over it), while nothing is left of point 4's time.
      expect(await restored(f, f.points.get(2)!.time)).toEqual(restoresAs(f, 1, '2 missing'));
      expect(await restored(f, f.points.get(4)!.time)).toEqual(restoresAs(f, 3));
      const served = await PitExport.open({ store: f.store, at: parsePointSelector('latest'), cacheBytes: 0 });
      try {
        expect(served.seq).toBe(3);
        expect(sha(await served.read(0, REGIONS * REGION))).toBe(f.points.get(3)!.digest);
      } finally {
        await served.close();
      }

      const logged = await log({ store: f.store });
      // Point 2's delta is lost but the span of 1–3 still says what it was; nothing is left of point 4.
      expect(logged.entries.map((e) => [e.seq, e.restorable, e.deltaMissing])).toEqual([
        [1, true, false],
        [2, false, true],
        [3, true, false],
        [5, false, false],
      ]);
      expect(logged.missing).toEqual([
        { type: 'missing', seq: 2, key: 'deltas/0000000000000002', unrestorable: [2] },
        { type: 'missing', seq: 4, key: 'deltas/0000000000000004', unrestorable: [5] },
      ]);
      expect(logged.timeline.map((t) => `${t.type} ${'seq' in t ? t.seq : ''}`)).toEqual(['delta 1', 'delta 2', 'delta 3', 'missing 4', 'delta 5']);

      const text = await cli('--repo', f.repoUrl, 'log');
      expect(text.code, text.stderr).toBe(EXIT.ok);
      expect(text.stdout).toMatch(/^\s*4 +- +- +- +- +MISSING$/m);
      expect(text.stdout).toMatch(/^\s*5 .* UNRESTORABLE$/m);
      expect(text.stdout).toMatch(/^\s*2 .* MISSING$/m);
      expect(text.stdout).toContain('deltas/0000000000000004 is missing: points 5 cannot be restored (no span stands in for it)');
      expect(await status({ store: f.store })).toMatchObject({ newest: { seq: 5 }, missingDeltas: [2, 4], unrestorable: [5] });

      // A restore that names the gap's point gets the one before it, and says so.
      const target = join(f.work, 'cli.img');
      const viaCli = await cli('--repo', f.repoUrl, 'restore', '--at', '5', '--to', target);
      expect(viaCli.code, viaCli.stderr).toBe(EXIT.ok);
      expect(viaCli.stderr).toContain('chose point in time 3; passed over 5 unrestorable, 4 missing');

      // verify agrees: each missing delta costs the points up to the span that stands in for it.
      const verified = await verify({ store: f.store, readData: true, workers: 2 });
      expect(verified.problems).toEqual([
        { object: 'delta', key: 'deltas/0000000000000002', detail: 'missing', affects: [2] },
        { object: 'delta', key: 'deltas/0000000000000004', detail: 'missing', affects: [4, 5] },
      ]);
      expect(verified).toMatchObject({ deltas: 3, damaged: [2, 4, 5], locationsRead: verified.locations });
      // Its marks change nothing that restore could use.
      expect(await restored(f, '3')).toEqual(restoresAs(f, 3));
      expect(await restored(f, 'latest')).toEqual(restoresAs(f, 3, '5 unrestorable, 4 missing'));
    });

    it('a writer refuses when the newest point cannot be built, and writes after the newest (never into the gap) when a span stands in', async () => {
      const f = await makeFixture(kind);
      const delta4 = await f.raw.get('deltas/0000000000000004');
      await f.raw.delete('deltas/0000000000000004');
      const before = await snapshot(f.raw);
      const refused = await cli('--repo', f.repoUrl, 'backup', f.source);
      expect(refused.code).toBe(EXIT.integrity);
      expect(refused.stderr).toMatch(/^cdp-s3: delta 0000000000000004: is missing and no span after it stands in for it, so the newest point in time \(5\) cannot be built and backup has nothing to add to: put the missing object back, or restore/);
      expect(refused.stderr.trim().split('\n')).toHaveLength(1);
      await expect(scan({ store: f.store, source: f.source, workers: 2 })).rejects.toThrow(/delta 0000000000000004: is missing .* scan has nothing to add to/);
      expect(await snapshot(f.raw)).toEqual(before);

      // Only the gap at 2 is left: the span of 1–3 lets the newest point be built.
      await f.raw.put('deltas/0000000000000004', delta4);
      await f.raw.delete('deltas/0000000000000002');
      f.image.fill(0x66, 7 * REGION, 7 * REGION + 100);
      await writeFile(f.source, f.image);
      const added = await cli('--repo', f.repoUrl, 'backup', f.source);
      expect(added.code, added.stderr).toBe(EXIT.ok);
      // (The gap lies under the span, which a writer does not list: log, status and verify show it.)
      expect(await f.raw.keys('deltas/')).not.toContain('deltas/0000000000000002');
      f.points.set(6, { digest: sha(f.image), time: '' });
      expect(await restored(f, 'latest')).toEqual(restoresAs(f, 6));
      expect(await restored(f, '1')).toEqual(restoresAs(f, 1));

      // A scan walks back across the gap without explaining anything by the missing delta.
      f.image.fill(0x77, 2 * REGION, 2 * REGION + 10); // region 2, last written by the missing delta 2
      await writeFile(f.source, f.image);
      const scanned = await scan({ store: f.store, source: f.source, workers: 2 });
      expect(scanned.missingDeltas).toEqual([2]);
      expect(scanned.suspect).toEqual([6, 5, 4, 3, 2, 1]);
      expect(scanned.fixupSeq).toBe(7);
      expect((await planRestore({ store: f.store, at: parsePointSelector('latest') })).seq).toBe(7);
    });
  });
}

for (const kind of ['fs', 's3'] as const) {
  describe(`a garbled marks object (${kind} store)`, () => {
    it('verify names it, restore passes over every point it could concern, and everything else keeps working', async () => {
      const f = await makeFixture(kind);
      // A scan finds region 5 (written by delta 5) changed behind cdp-s3's back: fix-up 6, 5 suspect.
      const scanTime = Date.parse(f.points.get(5)!.time) + 60_000;
      f.image.fill(0x55, 5 * REGION, 5 * REGION + 10);
      await writeFile(f.source, f.image);
      const scanned = await scan({ store: f.store, source: f.source, workers: 2, clock: () => scanTime });
      expect(scanned).toMatchObject({ suspect: [5], fixupSeq: 6 });
      f.points.set(6, { digest: sha(f.image), time: new Date(scanTime).toISOString() });
      const [marksKey] = await f.raw.keys('marks/');
      // The scan's time, the newest point it had seen (its fix-up 6), a random part.
      expect(marksKey).toBe(`marks/${String(scanTime).padStart(16, '0')}-${seqName(6)}-${marksKey!.slice(-8)}`);
      await f.raw.put(marksKey!, flipBodyByte(await f.raw.get(marksKey!)));

      // Backup keeps working; its point ended after the unreadable object was written, so it is trusted.
      f.image.fill(0x07, 7 * REGION, 7 * REGION + 10);
      await writeFile(f.source, f.image);
      expect((await backup({ store: f.store, source: f.source, workers: 2, clock: () => scanTime + 1000 })).seq).toBe(7);
      f.points.set(7, { digest: sha(f.image), time: '' });
      expect(await restored(f, 'latest')).toEqual(restoresAs(f, 7));
      const served = await PitExport.open({ store: f.store, at: parsePointSelector('latest'), cacheBytes: 0 });
      expect(served.seq).toBe(7);
      await served.close();

      // Points that ended before it may be marked by it: passed over, and with none left, refused.
      const refused = await cli('--repo', f.repoUrl, 'restore', '--at', '6', '--to', join(f.work, 'no.img'));
      expect(refused.code).toBe(EXIT.noPointInTime);
      expect(refused.stderr).toMatch(/^cdp-s3: every point in time at or before 6 is marked untrusted \(6-1 marks-unreadable\): see cdp-s3 log; pass --allow-suspect/);
      const allowed = await planRestore({ store: f.store, at: parsePointSelector('6'), allowSuspect: true });
      expect(allowed).toMatchObject({ seq: 6, untrusted: ['marks-unreadable'], skipped: [] });

      const found = await verify({ store: f.store, workers: 2, dryRun: true });
      expect(found.problems).toEqual([
        expect.objectContaining({ object: 'marks', key: marksKey, detail: expect.stringMatching(/^cannot be read \(checksum mismatch/), affects: [1, 2, 3, 4, 5, 6] }),
      ]);
      expect(found.damaged).toEqual([]);
      const viaCli = await cli('--repo', f.repoUrl, 'verify');
      expect(viaCli.code).toBe(EXIT.integrity);
      expect(viaCli.stdout).toContain(`marks ${marksKey}: cannot be read (checksum mismatch`);

      const logged = await cli('--repo', f.repoUrl, 'log');
      expect(logged.code, logged.stderr).toBe(EXIT.ok);
      expect(logged.stdout).toContain(`warning: trust marks ${marksKey} cannot be read (checksum mismatch`);
      expect(logged.stdout).toMatch(/^\s*6 .* UNKNOWN$/m);
      expect(logged.stdout).toMatch(/^\s*7 .* -$/m);
      const json = JSON.parse((await cli('--repo', f.repoUrl, '--json', 'log')).stdout) as Array<Record<string, unknown>>;
      expect(json).toContainEqual(expect.objectContaining({ type: 'unreadable-marks', key: marksKey, possiblyMarked: [1, 2, 3, 4, 5, 6] }));
      expect(json.find((e) => e['seq'] === 7)).toMatchObject({ suspect: false, marksUnreadable: [] });
      const statusCli = await cli('--repo', f.repoUrl, 'status');
      expect(statusCli.code, statusCli.stderr).toBe(EXIT.ok);
      expect(statusCli.stdout).toContain(`warning: trust marks ${marksKey} cannot be read (checksum mismatch`);
      expect(await status({ store: f.store })).toMatchObject({ unreadableMarks: [{ key: marksKey }] });
      expect((await scan({ store: f.store, source: f.source, workers: 2, clock: () => scanTime + 2000 })).discrepancies).toBe(0);
    });
  });
}

describe('unreadable marks objects and skewed clocks (local store)', () => {
  it('what one may concern ends at the newest point its writer had seen (from its key), whatever its clock said; a key without a seq concerns every point', async () => {
    const f = await makeFixture('fs'); // points 1 to 5
    const end = (seq: number): number => Date.parse(f.points.get(seq)!.time);
    const time = (ms: number): string => String(ms).padStart(16, '0');
    const DAY = 86_400_000;
    /** With only `key` (garbled) in marks/: the points log, verify and restore take it to concern, and the newest restore takes. */
    const concerned = async (key: string) => {
      await f.store.put(key, new Uint8Array(60).fill(7));
      try {
        const logged = await log({ store: f.store });
        const possiblyMarked = logged.unreadableMarks.map((u) => u.possiblyMarked);
        const shownUnknown = logged.entries.filter((e) => e.marksUnreadable.length > 0).map((e) => e.seq);
        expect(shownUnknown).toEqual(possiblyMarked[0]);
        const affects = (await verify({ store: f.store, workers: 2, dryRun: true })).problems.map((p) => p.affects);
        expect(affects).toEqual(possiblyMarked);
        const latest = await planRestore({ store: f.store, at: parsePointSelector('latest') });
        return { possiblyMarked: possiblyMarked[0], newestSeq: logged.unreadableMarks[0]!.newestSeq, restores: latest.seq, skipped: latest.skipped.map((s) => s.seq) };
      } finally {
        await f.store.delete(key);
      }
    };

    // Its writer's clock a day behind, having seen point 3: points 1 to 3, though it says it was written before all of them.
    expect(await concerned(`marks/${time(end(1) - DAY)}-${seqName(3)}-0badc10c`)).toEqual({ possiblyMarked: [1, 2, 3], newestSeq: 3, restores: 5, skipped: [] });
    // A day ahead, having seen point 2: only 1 and 2, though every point ended before its time.
    expect(await concerned(`marks/${time(end(5) + DAY)}-${seqName(2)}-0badc10d`)).toEqual({ possiblyMarked: [1, 2], newestSeq: 2, restores: 5, skipped: [] });
    // Having seen all five: the newest is passed over too, and then every point is.
    await f.store.put(`marks/${time(end(5))}-${seqName(5)}-0badc10e`, new Uint8Array(60).fill(7));
    await expect(planRestore({ store: f.store, at: parsePointSelector('latest') })).rejects.toMatchObject({ code: 'NO_POINT_IN_TIME' });
    const taken = await planRestore({ store: f.store, at: parsePointSelector('5'), allowSuspect: true });
    expect({ seq: taken.seq, untrusted: taken.untrusted }).toEqual({ seq: 5, untrusted: ['marks-unreadable'] });
    expect(await status({ store: f.store })).toMatchObject({ unreadableMarks: [{ key: `marks/${time(end(5))}-${seqName(5)}-0badc10e`, newestSeq: 5 }] });
    await f.store.delete(`marks/${time(end(5))}-${seqName(5)}-0badc10e`);
    // A key of any other shape names no seq: it may concern every point.
    await f.store.put(`marks/${time(end(4))}-0badc10f`, new Uint8Array(60).fill(7));
    await expect(planRestore({ store: f.store, at: parsePointSelector('latest') })).rejects.toMatchObject({ code: 'NO_POINT_IN_TIME' });
    await f.store.delete(`marks/${time(end(4))}-0badc10f`);
  });
});
