// forget + prune: random histories thinned by random policies; every kept point restores
// bit-exact afterwards, the removed ones are gone from log and restore, verify is clean, and
// the repository keeps fewer objects. A model (the images and times of every point, and
// applyRetention over them) says what must be kept.

import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { policyOf } from '../../src/cli/forget.js';
import { backup } from '../../src/core/backup.js';
import { forget } from '../../src/core/forget.js';
import { init } from '../../src/core/init.js';
import { log } from '../../src/core/log.js';
import { parsePointSelector } from '../../src/core/points.js';
import { prune } from '../../src/core/prune.js';
import { scan } from '../../src/core/scan.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { verify } from '../../src/core/verify.js';
import { StoreError } from '../../src/errors.js';
import { type RetentionPolicy, applyRetention } from '../../src/model/retention.js';
import type { ObjectStore } from '../../src/store/types.js';
import { FaultStore } from '../helpers/fault-store.js';
import { makeImage, mutateImage } from '../helpers/images.js';
import { snapshot } from '../helpers/raw-objects.js';
import { type ScratchRepository, useS3Fixture } from '../helpers/s3-fixture.js';
import { parseRunKey } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';

const REGION = 64 * 1024;
const MINUTE = 60_000;
const fixture = useS3Fixture('forget', ['forget']);
let counter = 0;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

function xorshift(seed: number): (n: number) => number {
  let state = seed | 1;
  return (n) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
}

interface History {
  scratch: ScratchRepository;
  source: string;
  image: Buffer;
  /** By seq: the image's SHA-256 and the point's time. */
  points: Map<number, { sha: string; time: number }>;
}

/** `count` points a few minutes apart (fanout 4: spans of several levels), each changing a few regions. */
async function makeHistory(kind: 'fs' | 's3', count: number, seed: number): Promise<History> {
  const scratch = await fixture.repository(kind, 'forget', ++counter);
  const source = join(scratch.work, 'disk.img');
  const image = makeImage({ size: 12 * REGION, regionSize: REGION, seed });
  await writeFile(source, image);
  await init({ store: scratch.store, from: source, regionSize: REGION, spanFanout: 4 });
  const random = xorshift(seed);
  const points = new Map<number, { sha: string; time: number }>();
  let time = Date.UTC(2026, 10, 28, 22, 0);
  for (let i = 0; i < count; i++) {
    if (i > 0) mutateImage(image, 1 + random(3), seed * 1000 + i);
    await writeFile(source, image);
    time += (1 + random(40)) * MINUTE * (random(10) === 0 ? 30 : 1);
    const at = time;
    const result = await backup({ store: scratch.store, source, clock: () => at });
    points.set(result.seq, { sha: sha(image), time: Date.parse(result.time) });
  }
  return { scratch, source, image, points };
}

async function restoreSha(store: ObjectStore, work: string, at: string): Promise<{ seq: number; sha: string }> {
  const plan = await planRestore({ store, at: parsePointSelector(at) });
  const target = join(work, `restored-${++counter}.img`);
  await executeRestore(plan, { to: target });
  return { seq: plan.seq, sha: sha(await readFile(target)) };
}

/** Every kept point restores bit-exact by seq and by time, log lists exactly them, removed ones are refused by seq. */
async function expectHistory(h: History, kept: Set<number>): Promise<void> {
  const { store, work } = h.scratch;
  const listed = (await log({ store })).entries.map((e) => e.seq);
  expect(listed).toEqual([...kept].sort((a, b) => a - b));
  for (const seq of kept) {
    expect((await restoreSha(store, work, String(seq))).sha, `point ${seq}`).toBe(h.points.get(seq)!.sha);
  }
  const removed = [...h.points.keys()].filter((seq) => !kept.has(seq));
  for (const seq of removed.slice(0, 5)) {
    await expect(planRestore({ store, at: parsePointSelector(String(seq)) })).rejects.toThrow(/was removed by cdp-s3 forget/);
    // By time: the newest kept point at or before it.
    const expected = Math.max(...[...kept].filter((k) => k < seq), 0);
    const at = new Date(h.points.get(seq)!.time).toISOString();
    if (expected === 0) await expect(planRestore({ store, at: parsePointSelector(at) })).rejects.toThrow();
    else expect((await planRestore({ store, at: parsePointSelector(at) })).seq).toBe(expected);
  }
}

/**
 * After forget + compaction + a prune with --grace 0s: one version per position, every delta at a
 * kept point holding the points since the kept one before it, every span stopping at its last
 * kept point, and no run of forgotten points only.
 */
async function expectCompacted(h: History, kept: Set<number>): Promise<void> {
  const repo = await Repository.open(h.scratch.store);
  const keptBefore = (seq: number): number => Math.max(0, ...[...kept].filter((k) => k < seq));
  const keptAtOrBefore = (seq: number): number => Math.max(0, ...[...kept].filter((k) => k <= seq));
  const positions = new Set<string>();
  for (const key of await h.scratch.raw.keys('deltas/')) {
    const { last, generation } = parseRunKey(key, 'deltas/')!;
    expect(kept.has(last), `${key} is a kept point's`).toBe(true);
    expect(positions.has(`0/${last}`), `one version of ${key}`).toBe(false);
    positions.add(`0/${last}`);
    const run = await repo.readRun({ level: 0, first: last, last, generation });
    expect([run.root.from, run.root.to], key).toEqual([keptBefore(last), last]);
  }
  for (const key of await h.scratch.raw.keys('spans/')) {
    const level = Number(key.split('/')[1]);
    const { last, generation } = parseRunKey(key, key.slice(0, key.lastIndexOf('/') + 1))!;
    const first = last - repo.fanout ** level + 1;
    expect(positions.has(`${level}/${last}`), `one version of ${key}`).toBe(false);
    positions.add(`${level}/${last}`);
    const run = await repo.readRun({ level, first, last, generation });
    expect(keptAtOrBefore(last) >= first, `${key} holds a kept point`).toBe(true);
    expect([run.root.from, run.root.to], key).toEqual([keptBefore(first), keptAtOrBefore(last)]);
  }
}

describe('forget and prune', () => {
  it('random histories, random policies, both stores: the kept points restore bit-exact after forget + prune (compaction, repack), verify is clean, fewer objects stay', async () => {
    const random = xorshift(77);
    // Three on the local store, one on the S3 server.
    for (let trial = 0; trial < 4; trial++) {
      const h = await makeHistory(trial < 3 ? 'fs' : 's3', 30 + random(20), 100 + trial);
      const seqs = [...h.points.keys()];
      const kept = new Set(seqs);
      // Two forgets with different policies: their removals add up.
      for (let round = 0; round < 2; round++) {
        const policy: RetentionPolicy = [
          { last: 1 + random(5) },
          { calendar: { hourly: 1 + random(6) } },
          { withinMs: (30 + random(120)) * MINUTE, calendar: { daily: 1 } },
          { calendar: { minutely: 3 + random(10), hourly: 2 }, seqs: [seqs[random(seqs.length)]!].filter((s) => kept.has(s)) },
        ][random(4)]!;
        const model = applyRetention(
          [...kept].map((seq) => ({ seq, time: h.points.get(seq)!.time })),
          policy,
        );
        const result = await forget({ store: h.scratch.store, policy });
        expect(result.keep.map((k) => k.seq)).toEqual(model.keep.map((k) => k.seq));
        for (const seq of model.remove) kept.delete(seq);
      }
      const before = (await h.scratch.raw.keys()).length;
      const pruned = await prune({ store: h.scratch.store, graceMs: 0 });
      expect(pruned.runsUnneeded).toBeGreaterThan(0);
      const after = (await h.scratch.raw.keys()).length;
      expect(after).toBeLessThan(before);
      expect(pruned.compaction!.rewritten).toBeGreaterThan(0);
      await expectCompacted(h, kept);
      await expectHistory(h, kept);
      expect((await verify({ store: h.scratch.store, readData: true, dryRun: true })).problems).toEqual([]);

      // The history goes on: a new point (its spans can make more of the removed points' runs
      // unneeded), and another prune, which never deletes a kept point's own delta.
      mutateImage(h.image, 2, 9999 + trial);
      await writeFile(h.source, h.image);
      const next = await backup({ store: h.scratch.store, source: h.source });
      h.points.set(next.seq, { sha: sha(h.image), time: Date.parse(next.time) });
      kept.add(next.seq);
      const again = await prune({ store: h.scratch.store, graceMs: 0 });
      expect(again.compaction!.rewritten).toBe(0); // nothing forgotten since: nothing to fold
      await expectHistory(h, kept);
      expect((await verify({ store: h.scratch.store, readData: true, dryRun: true })).problems).toEqual([]);

      // A second forget folds into runs the first compaction wrote (a second generation).
      const more = await forget({ store: h.scratch.store, policy: { last: 2 + random(4), calendar: { hourly: 1 + random(3) } } });
      for (const [a, b] of more.removed) for (let seq = a; seq <= b; seq++) kept.delete(seq);
      const third = await prune({ store: h.scratch.store, graceMs: 0 });
      if (more.removedCount > 0) expect(third.compaction!.generation).toBeGreaterThan(pruned.compaction!.generation);
      await expectCompacted(h, kept);
      await expectHistory(h, kept);
      expect((await verify({ store: h.scratch.store, readData: true, dryRun: true })).problems).toEqual([]);
    }
  });

  it.each(['fs', 's3'] as const)('%s store: a dry run changes nothing; the grace keeps removed points\' objects until it passes; a crash mid-prune loses no kept point', async (kind) => {
    const h = await makeHistory(kind, 24, 7);
    const { store, raw } = h.scratch;
    const untouched = await snapshot(raw);
    const dry = await forget({ store, policy: { last: 3 }, dryRun: true });
    expect(dry.removedCount).toBe(21);
    expect(await snapshot(raw)).toEqual(untouched);

    await forget({ store, policy: { last: 3, seqs: [5] } });
    const kept = new Set([5, 22, 23, 24]);
    let now = Date.UTC(2026, 11, 7);
    const clock = (): number => now;
    const first = await prune({ store, clock });
    expect(first.deleted).toEqual([]);
    expect(first.waiting.some((w) => w.key.startsWith('deltas/'))).toBe(true);
    await expectHistory(h, kept);

    now += 25 * 3_600_000;
    let batches = 0;
    class CrashingStore extends FaultStore {
      // The runs' batch goes through; the packs' batch fails half-way.
      override async deleteMany(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void> {
        if (++batches === 1 || keys.length < 2) return super.deleteMany(keys, options);
        await super.deleteMany(keys.slice(0, 1), options);
        throw new StoreError('unreachable', 'crash in the middle of the deletes');
      }
    }
    await expect(prune({ store: new CrashingStore(store), clock })).rejects.toThrow(/crash in the middle/);
    await expectHistory(h, kept);
    await prune({ store, clock });
    await expectHistory(h, kept);
    expect((await verify({ store, readData: true, dryRun: true })).problems).toEqual([]);
    expect(await raw.keys('prunes/')).toEqual([]);
  });

  it('damage only a removed point had is not reported by verify; damage a kept point needs still is', async () => {
    const h = await makeHistory('fs', 24, 9);
    await forget({ store: h.scratch.store, policy: { last: 3 } }); // keeps 22-24: covers 2/16, 1/20, deltas 21-24
    const garble = async (key: string): Promise<void> => {
      const bytes = await h.scratch.raw.get(key);
      bytes[12] = bytes[12]! ^ 0xff;
      await h.scratch.raw.put(key, bytes);
    };
    await garble('deltas/0000000000000005');
    expect((await verify({ store: h.scratch.store, dryRun: true })).problems).toEqual([]);
    await garble('deltas/0000000000000021'); // removed, but the kept points' covers need it
    const problems = (await verify({ store: h.scratch.store, dryRun: true })).problems;
    expect(problems.map((p) => [p.key, p.affects])).toEqual([['deltas/0000000000000021', [22, 23]]]); // 24's cover is 2/16, 1/20, 1/24
  });

  it('a scan after forget + prune marks exactly the kept points after the last recorded change; log --last counts points', async () => {
    const scratch = await fixture.repository('fs', 'forget', ++counter);
    const source = join(scratch.work, 'disk.img');
    const image = makeImage({ size: 8 * REGION, regionSize: REGION, seed: 4 });
    await writeFile(source, image);
    await init({ store: scratch.store, from: source, regionSize: REGION, spanFanout: 4 });
    let time = Date.UTC(2026, 0, 1);
    for (let seq = 1; seq <= 12; seq++) {
      if (seq > 1) image.fill(seq, (seq === 6 ? 5 : 0) * REGION, (seq === 6 ? 5 : 0) * REGION + 100); // region 5 changes only at 6
      await writeFile(source, image);
      time += MINUTE;
      const at = time;
      expect((await backup({ store: scratch.store, source, clock: () => at })).seq).toBe(seq);
    }
    await forget({ store: scratch.store, policy: { seqs: [1, 2, 3, 4, 8, 9, 10, 11, 12] } }); // removes 5-7
    expect((await prune({ store: scratch.store, graceMs: 0 })).deleted.map((d) => d.key)).toContain('deltas/0000000000000006');
    image.fill(0xee, 5 * REGION, 5 * REGION + 10); // a write no point in time recorded
    await writeFile(source, image);
    const result = await scan({ store: scratch.store, source, clock: () => time + MINUTE });
    // The change to region 5 is in span 01/8 (points 5-8): the kept points from 8 on are suspect, 1-4 are not.
    expect(result.suspect).toEqual([12, 11, 10, 9, 8]);
    expect(result.fixupSeq).toBe(13);
    expect((await log({ store: scratch.store, last: 3 })).entries.map((e) => e.seq)).toEqual([11, 12, 13]);
    expect((await log({ store: scratch.store, last: 7 })).entries.map((e) => e.seq)).toEqual([4, 8, 9, 10, 11, 12, 13]);
  });

  it('bad policies are refused before anything is read or written', async () => {
    expect(() => policyOf({})).not.toThrow();
    const h = await makeHistory('fs', 3, 3);
    const untouched = await snapshot(h.scratch.raw);
    await expect(forget({ store: h.scratch.store, policy: policyOf({}) })).rejects.toThrow(/empty retention policy/);
    expect(() => policyOf({ keepLast: '0' })).toThrow(/--keep-last "0": give a whole number, at least 1/);
    expect(() => policyOf({ keepHourly: 'many' })).toThrow(/--keep-hourly "many"/);
    expect(() => policyOf({ keepWithin: 'forever' })).toThrow(/--keep-within "forever" is not a duration/);
    await expect(forget({ store: h.scratch.store, policy: { last: 1, seqs: [9] } })).rejects.toThrow(/--keep-seq 9: no such point in time/);
    await forget({ store: h.scratch.store, policy: { last: 1 } });
    await expect(forget({ store: h.scratch.store, policy: { last: 1, seqs: [1] } })).rejects.toThrow(/--keep-seq 1: that point was removed by an earlier forget/);
    expect(Object.keys(await snapshot(h.scratch.raw)).filter((k) => !(k in untouched))).toHaveLength(1); // the one forget record
  });
});
