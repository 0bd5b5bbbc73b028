// Compaction: a crash at every put it makes leaves the chain as it was (the generation is
// committed by its record, last); a reader that opened a point before the compaction reads it to
// the end while prune's grace keeps the older versions; a prune that finds another writer
// holding the lock does not compact, and deletes nothing the next compaction needs.

import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { forget } from '../../src/core/forget.js';
import { init } from '../../src/core/init.js';
import { parsePointSelector } from '../../src/core/points.js';
import { prune } from '../../src/core/prune.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { openPitExport } from '../../src/core/serve.js';
import { verify } from '../../src/core/verify.js';
import { AbortedError, StoreError } from '../../src/errors.js';
import { acquireWriterLock } from '../../src/repo/lock.js';
import { Repository } from '../../src/repo/repository.js';
import type { ObjectStore } from '../../src/store/types.js';
import { FaultStore } from '../helpers/fault-store.js';
import { makeImage, mutateImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
const HOUR = 3_600_000;
const fixture = useS3Fixture('compact', ['compact']);
let counter = 0;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** 20 points (fanout 4: spans of two levels); points 3–9 and 13–17 forgotten. */
async function forgottenHistory(kind: 'fs' | 's3') {
  const scratch = await fixture.repository(kind, 'compact', ++counter);
  const source = join(scratch.work, 'disk.img');
  const image = makeImage({ size: 10 * REGION, regionSize: REGION, seed: 3 });
  await writeFile(source, image);
  await init({ store: scratch.store, from: source, regionSize: REGION, spanFanout: 4 });
  const shas = new Map<number, string>();
  for (let i = 1; i <= 20; i++) {
    if (i > 1) mutateImage(image, 1 + (i % 3), i);
    await writeFile(source, image);
    const result = await backup({ store: scratch.store, source });
    shas.set(result.seq, sha(image));
  }
  const keepSeqs = [1, 2, 10, 11, 12, 18, 19, 20];
  await forget({ store: scratch.store, policy: { seqs: keepSeqs } });
  return { scratch, source, image, shas, kept: new Set(keepSeqs) };
}

async function restoresKept(store: ObjectStore, work: string, shas: Map<number, string>, kept: Set<number>): Promise<void> {
  for (const seq of kept) {
    const target = join(work, `restored-${++counter}.img`);
    await executeRestore(await planRestore({ store, at: parsePointSelector(String(seq)) }), { to: target });
    expect(sha(await readFile(target)), `point ${seq}`).toBe(shas.get(seq));
  }
}

describe.each(['fs', 's3'] as const)('compaction (%s store)', (kind) => {
  it('a crash at any put of a compaction leaves the chain as it was; the next prune compacts and deletes the leftovers', async () => {
    const { scratch, shas, kept } = await forgottenHistory(kind);
    // Count the puts a whole compaction makes, on a dry run of the same repository: one per
    // rewritten run (plus page packs) and the record.
    const dry = await prune({ store: scratch.store, dryRun: true });
    expect(dry.compaction!.rewritten).toBeGreaterThan(2);
    // --max-unused 0: the repack after the compaction is crashed into as well.
    for (let crashAt = 1; ; crashAt++) {
      let puts = 0;
      let crashed = false;
      const failing = new FaultStore(scratch.store, {
        beforePut: (key) => {
          if (key.startsWith('prunes/') || key.startsWith('locks/')) return;
          if (++puts === crashAt) {
            crashed = true;
            throw new StoreError('unreachable', `crash at put ${crashAt} (${key})`);
          }
        },
      });
      const attempt = prune({ store: failing, graceMs: 0, maxUnused: 0 });
      if (!crashed) {
        // Counting ran past the last put: this attempt completes (nothing left to crash).
        await attempt.catch(() => undefined);
      } else await expect(attempt).rejects.toThrow(/crash at put/);
      if (!crashed) break;
      // The chain is the one before: generation 0 (or what an earlier attempt committed), every kept point restores.
      await restoresKept(scratch.store, scratch.work, shas, kept);
      // The lock the crashed prune held expires; tests release it by hand.
      for (const key of await scratch.raw.keys('locks/')) await scratch.raw.delete(key);
      if (crashAt > 80) throw new Error('compaction never finished');
    }
    const done = await prune({ store: scratch.store, graceMs: 0, maxUnused: 0 });
    expect(done.compaction!.rewritten).toBe(0); // committed by the last attempt
    expect(done.repack!.packsRepacked).toBe(0);
    expect(done.repack!.storedBytes).toBe(done.repack!.usedBytes);
    const deltas = await scratch.raw.keys('deltas/');
    expect(deltas.every((key) => kept.has(Number(key.slice(7, 23))))).toBe(true);
    expect(new Set(deltas.map((key) => key.slice(0, 23))).size).toBe(deltas.length); // one version each
    await restoresKept(scratch.store, scratch.work, shas, kept);
    expect((await verify({ store: scratch.store, readData: true, dryRun: true })).problems).toEqual([]);
  });

  it('repack: --max-unused 0 leaves no unused byte in any pack, the default at most 5%; kept points restore, verify reads every piece once', async () => {
    const { scratch, shas, kept } = await forgottenHistory(kind);
    const loose = await prune({ store: scratch.store, graceMs: 0, maxUnused: Infinity });
    expect(loose.repack).toBeUndefined();
    const measured = await prune({ store: scratch.store, graceMs: 0, maxUnused: 1, dryRun: true });
    expect(measured.repack!.storedBytes).toBeGreaterThan(measured.repack!.usedBytes); // partly used packs after the compaction
    const packsBefore = await scratch.raw.keys('packs/');
    const tight = await prune({ store: scratch.store, graceMs: 0 });
    const unusedShare = (r: { storedBytes: number; usedBytes: number }): number => (r.storedBytes - r.usedBytes) / r.usedBytes;
    const after = await prune({ store: scratch.store, graceMs: 0, maxUnused: 1, dryRun: true });
    if (unusedShare(measured.repack!) > 0.05) expect(tight.repack!.packsRepacked).toBeGreaterThan(0);
    expect(unusedShare(after.repack!)).toBeLessThanOrEqual(0.05);
    const all = await prune({ store: scratch.store, graceMs: 0, maxUnused: 0 });
    const none = await prune({ store: scratch.store, graceMs: 0, maxUnused: 0 });
    expect(none.repack!.storedBytes).toBe(none.repack!.usedBytes);
    expect(none.repack!.packsRepacked).toBe(0);
    expect(all.repack!.generation).toBeGreaterThan(tight.compaction!.generation);
    // The repacked packs went; new ones, named after point 0, hold their used pieces.
    const packsAfter = await scratch.raw.keys('packs/');
    expect(packsAfter.some((key) => key.startsWith('packs/0000000000000000-'))).toBe(true);
    expect(packsBefore.filter((key) => !packsAfter.includes(key)).length).toBeGreaterThan(0);
    await restoresKept(scratch.store, scratch.work, shas, kept);
    const checked = await verify({ store: scratch.store, readData: true, dryRun: true });
    expect(checked.problems).toEqual([]);
    expect(checked.locationsRead).toBe(checked.locations);
  });

  it('Ctrl-C (the abort signal the CLI raises on SIGINT) in the middle of a compaction: nothing committed, every kept point restores, the next prune finishes', async () => {
    const { scratch, shas, kept } = await forgottenHistory(kind);
    const stop = new AbortController();
    const interrupted = new FaultStore(scratch.store, {
      // The first run of the new generation is stored; then the user presses Ctrl-C.
      afterPut: (key) => {
        if (/\.\d{8}$/.test(key)) stop.abort();
      },
    });
    await expect(prune({ store: interrupted, graceMs: 0, signal: stop.signal })).rejects.toBeInstanceOf(AbortedError);
    expect(await scratch.raw.keys('compactions/')).toEqual([]);
    expect(await scratch.raw.keys('locks/')).toEqual([]); // released on the way out
    await restoresKept(scratch.store, scratch.work, shas, kept);
    const next = await prune({ store: scratch.store, graceMs: 0 });
    expect(next.compaction!.rewritten).toBeGreaterThan(0);
    await restoresKept(scratch.store, scratch.work, shas, kept);
    expect((await verify({ store: scratch.store, readData: true, dryRun: true })).problems).toEqual([]);
  });

  it('a reader that opened a point before the compaction reads it to the end: the older versions wait for the grace', async () => {
    const { scratch, shas, kept } = await forgottenHistory(kind);
    let now = Date.UTC(2026, 11, 7, 12);
    const clock = (): number => now;
    // A restore planned (its runs and pages listed and partly read) before the compaction…
    const plan = await planRestore({ store: scratch.store, at: parsePointSelector('12') });
    const first = await prune({ store: scratch.store, clock });
    expect(first.compaction!.rewritten).toBeGreaterThan(0);
    expect(first.deleted).toEqual([]);
    expect(first.waiting.some((w) => /^deltas\/\d{16}$/.test(w.key))).toBe(true); // older versions wait
    // …runs after it to the end, bit-exact.
    const target = join(scratch.work, 'during.img');
    await executeRestore(plan, { to: target });
    expect(sha(await readFile(target))).toBe(shas.get(12));
    now += 25 * HOUR;
    const second = await prune({ store: scratch.store, clock });
    expect(second.deleted.length).toBeGreaterThan(0);
    await restoresKept(scratch.store, scratch.work, shas, kept);
  });

  it('a serve of a kept point running through a compaction, a repack and the prune after them reads on: it opens its point afresh hourly', async () => {
    const { scratch, shas, kept } = await forgottenHistory(kind);
    let now = Date.UTC(2026, 11, 7, 12);
    const pit = await openPitExport({ store: scratch.store, at: parsePointSelector('12'), workers: 1, cacheBytes: 0, readAheadBytes: 0, clock: () => now });
    const readAll = async (): Promise<string> => sha(await pit.read(0, pit.size));
    try {
      expect(await readAll()).toBe(shas.get(12));
      // Every piece moves (--max-unused 0 repacks every partly used pack, --repack-small the others) and the old ones go at once.
      const pruned = await prune({ store: scratch.store, graceMs: 0, maxUnused: 0, repackSmall: true });
      expect(pruned.compaction!.rewritten).toBeGreaterThan(0);
      expect(pruned.deleted.some((d) => d.key.startsWith('packs/'))).toBe(true);
      // Within the hour it reads the map it opened, whose packs may be gone (a grace of 0s is only
      // for a repository nobody uses); an hour on it opens the point afresh and reads it whole.
      now += 3_600_000;
      expect(await readAll()).toBe(shas.get(12));
      expect(pit.stats.gets).toBeGreaterThan(0);
    } finally {
      await pit.close();
    }
    await restoresKept(scratch.store, scratch.work, shas, kept);
  });

  it('while another writer holds the lock, prune does not compact and keeps the forgotten points\' runs for the compaction to come', async () => {
    const { scratch, shas, kept } = await forgottenHistory(kind);
    const before = await scratch.raw.keys('deltas/');
    const lock = await acquireWriterLock(scratch.store, { command: 'backup' });
    try {
      const skipped = await prune({ store: scratch.store, graceMs: 2 * HOUR });
      expect(skipped.compaction).toBeUndefined();
      expect(skipped.compactionSkipped).toMatch(/^backup \(pid \d+ on .*\) holds the writer lock/);
      expect(skipped.waiting.filter((w) => w.key.startsWith('deltas/'))).toEqual([]);
    } finally {
      await lock.release();
    }
    expect(await scratch.raw.keys('deltas/')).toEqual(before);
    const compacted = await prune({ store: scratch.store, graceMs: 0 });
    expect(compacted.compaction!.generation).toBe(1);
    await restoresKept(scratch.store, scratch.work, shas, kept);
    // The chain a new writer builds on is the compacted one: the next point restores too.
    const repo = await Repository.open(scratch.store);
    expect((await repo.fullIndex()).generation).toBe(compacted.repack?.generation ?? 1); // the repack after it commits its own
  });
});
