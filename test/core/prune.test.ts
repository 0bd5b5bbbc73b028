// prune: packs and page packs no stored run references are deleted in two phases with a grace
// period, on both stores; what a writer may still need, and anything prune cannot prove
// unreferenced, is kept. Every point in time restores afterwards.

import { createHash } from 'node:crypto';
import { cp, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseGrace, parseMaxUnused } from '../../src/cli/prune.js';
import { copyUncompactedFixture } from '../../src/dev/golden-fixture.js';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { parsePointSelector } from '../../src/core/points.js';
import { prune } from '../../src/core/prune.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { verify } from '../../src/core/verify.js';
import { StoreError } from '../../src/errors.js';
import { deltaKey, packKey, pagePackKey } from '../../src/repo/keys.js';
import { acquireWriterLock } from '../../src/repo/lock.js';
import { Repository } from '../../src/repo/repository.js';
import { openStore } from '../../src/store/open.js';
import { FaultStore } from '../helpers/fault-store.js';
import { makeImage, mutateImage } from '../helpers/images.js';
import { snapshot } from '../helpers/raw-objects.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
const HOUR = 3_600_000;
const fixture = useS3Fixture('prune', ['prune']);
let counter = 0;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** Three points in time, a backup that fails after storing its packs (its delta put refused), and a fourth point: leftovers. */
async function repositoryWithLeftovers(kind: 'fs' | 's3') {
  const scratch = await fixture.repository(kind, 'prune', ++counter);
  const source = join(scratch.work, 'disk.img');
  const image = makeImage({ size: 16 * REGION, regionSize: REGION, seed: 5 });
  await writeFile(source, image);
  await init({ store: scratch.store, from: source, regionSize: REGION });
  const images: string[] = [];
  for (let round = 0; round < 3; round++) {
    if (round > 0) {
      mutateImage(image, 4, round);
      await writeFile(source, image);
    }
    await backup({ store: scratch.store, source });
    images.push(sha(image));
  }
  // A backup of point 4 whose delta never lands: its packs stay behind, unreferenced.
  mutateImage(image, 6, 9);
  await writeFile(source, image);
  const failing = new FaultStore(scratch.store, {
    beforePut: (key) => {
      if (key === deltaKey(4)) throw new StoreError('permanent', 'refused for the test', { key });
    },
  });
  await expect(backup({ store: failing, source })).rejects.toThrow(/refused for the test/);
  const crashed = failing.puts.filter((k) => k.startsWith('packs/'));
  expect(crashed.length).toBeGreaterThan(0);
  // Until point 4 is committed, they could be a live writer's: the next backup commits it.
  await backup({ store: scratch.store, source });
  images.push(sha(image));
  // Leftovers of a crash long ago (named after point 2), and a page pack of one.
  const oldPack = packKey(2, 'deadbeef');
  const oldPages = pagePackKey(3, 'cafef00d');
  await scratch.store.put(oldPack, Buffer.from('leftover pack'));
  await scratch.store.put(oldPages, Buffer.from('leftover page pack'));
  // What a live writer of point 5 may have stored before its delta: never a candidate.
  await scratch.store.put(packKey(5, '0badc0de'), Buffer.from('in flight'));
  // Not of the writers' naming: not prune's to delete.
  await scratch.store.put('packs/notes.txt', Buffer.from('kept'));
  return { scratch, source, images, leftovers: [...crashed, oldPack, oldPages].sort() };
}

async function restoresAll(store: FaultStore | Awaited<ReturnType<typeof repositoryWithLeftovers>>['scratch']['store'], work: string, images: string[]): Promise<void> {
  for (let seq = 1; seq <= images.length; seq++) {
    const target = join(work, `restored-${seq}-${Math.random().toString(16).slice(2)}.img`);
    await executeRestore(await planRestore({ store, at: parsePointSelector(String(seq)) }), { to: target });
    expect(sha(await readFile(target)), `point ${seq}`).toBe(images[seq - 1]);
  }
}

describe.each(['fs', 's3'] as const)('prune (%s store)', (kind) => {
  it('two phases: the first prune records the leftovers, a prune after the grace deletes them; every point restores', async () => {
    const { scratch, images, leftovers } = await repositoryWithLeftovers(kind);
    let now = Date.UTC(2026, 11, 7, 12);
    const clock = (): number => now;

    const before = await snapshot(scratch.raw);
    const dry = await prune({ store: scratch.store, clock, dryRun: true });
    expect(await snapshot(scratch.raw)).toEqual(before); // a dry run changes nothing
    expect(dry.waiting.map((w) => w.key).sort()).toEqual(leftovers);
    expect(dry.deleted).toEqual([]);

    const first = await prune({ store: scratch.store, clock });
    expect(first.deleted).toEqual([]);
    expect(first.waiting.map((w) => w.key).sort()).toEqual(leftovers);
    expect(first.inFlight).toBe(1);
    expect(first.waiting.every((w) => w.deletableAt === now + 24 * HOUR)).toBe(true);
    expect((await scratch.raw.keys('prunes/')).length).toBe(1);

    now += 23 * HOUR; // not yet: the grace counts from the first prune that found them
    const second = await prune({ store: scratch.store, clock });
    expect(second.deleted).toEqual([]);
    expect(second.waiting.every((w) => w.since === now - 23 * HOUR)).toBe(true);

    now += HOUR;
    const third = await prune({ store: scratch.store, clock });
    expect(third.deleted.map((d) => d.key).sort()).toEqual(leftovers);
    expect(third.waiting).toEqual([]);
    const keys = await scratch.raw.keys();
    for (const key of leftovers) expect(keys).not.toContain(key);
    expect(keys).toContain(packKey(5, '0badc0de'));
    expect(keys).toContain('packs/notes.txt');
    expect(await scratch.raw.keys('prunes/')).toEqual([]); // nothing waits: no record left

    await restoresAll(scratch.store, scratch.work, images);
    const checked = await verify({ store: scratch.store, readData: true, dryRun: true });
    expect(checked.problems).toEqual([]);
  });

  it('--grace 0s deletes at once, but not while another writer holds the lock', async () => {
    const { scratch, images, leftovers } = await repositoryWithLeftovers(kind);
    const lock = await acquireWriterLock(scratch.store, { command: 'backup' });
    try {
      await expect(prune({ store: scratch.store, graceMs: 0 })).rejects.toThrow(/a --grace under 1h \(0s deletes at once\) is only safe with no other writer, but backup \(pid \d+ on .*\) holds the repository lock/);
      await expect(prune({ store: scratch.store, graceMs: 30 * 60_000 })).rejects.toThrow(/a --grace under 1h/);
      expect((await scratch.raw.keys()).filter((k) => leftovers.includes(k)).sort()).toEqual(leftovers);
    } finally {
      await lock.release();
    }
    const result = await prune({ store: scratch.store, graceMs: 0 });
    expect(result.deleted.map((d) => d.key).sort()).toEqual(leftovers);
    expect(await scratch.raw.keys('locks/')).toEqual([]); // its own lock is gone again
    await restoresAll(scratch.store, scratch.work, images);
  });

  it('a missing delta or an unreadable run: prune deletes nothing and names it', async () => {
    const { scratch } = await repositoryWithLeftovers(kind);
    const page = (await scratch.raw.keys('deltas/'))[1]!;
    const bytes = await scratch.raw.get(page);
    await scratch.raw.put(page, Buffer.concat([bytes.subarray(0, 20), Buffer.from([bytes[20]! ^ 0xff]), bytes.subarray(21)]));
    const before = await snapshot(scratch.raw);
    await expect(prune({ store: scratch.store, graceMs: 0 })).rejects.toThrow(/prune: deleted nothing: delta 0000000000000002 \(deltas\/0000000000000002\) cannot be read/);
    expect(await snapshot(scratch.raw)).toEqual(before);
    await scratch.raw.delete(page);
    await expect(prune({ store: scratch.store, graceMs: 0 })).rejects.toThrow(/deleted nothing: deltas\/0000000000000002 is missing/);
    expect(Object.keys(await snapshot(scratch.raw)).length).toBe(Object.keys(before).length - 1);
  });

  it('prune while a backup is between its packs and its delta: the backup\'s objects are never candidates; it commits and restores', async () => {
    const { scratch, source, images } = await repositoryWithLeftovers(kind);
    let now = Date.UTC(2026, 11, 7);
    const clock = (): number => now;
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let reached!: () => void;
    const atDelta = new Promise<void>((resolve) => (reached = resolve));
    const holding = new FaultStore(scratch.store, {
      beforePut: async (key) => {
        if (key === deltaKey(5)) {
          reached();
          await held;
        }
      },
    });
    const image = await readFile(source);
    image.fill(0x5a, 3 * REGION, 5 * REGION);
    await writeFile(source, image);
    const running = backup({ store: holding, source });
    await atDelta; // its packs are stored, its delta not yet
    const packs = holding.puts.filter((k) => k.startsWith('packs/'));
    expect(packs.length).toBeGreaterThan(0);
    const during = await prune({ store: scratch.store, clock });
    expect(during.inFlight).toBeGreaterThanOrEqual(packs.length);
    for (const key of packs) expect([...during.waiting, ...during.deleted].map((c) => c.key)).not.toContain(key);
    release();
    expect((await running).seq).toBe(5);
    images.push(sha(image));
    now += 48 * 3_600_000; // long past the grace: the leftovers go, the new point's packs stay
    const after = await prune({ store: scratch.store, clock });
    for (const key of packs) expect(after.deleted.map((d) => d.key)).not.toContain(key);
    await restoresAll(scratch.store, scratch.work, images);
  });

  it('a crash at any delete leaves every point restorable, and the next prune finishes the job', async () => {
    const { scratch, images, leftovers } = await repositoryWithLeftovers(kind);
    let deletes = 0;
    class CrashingStore extends FaultStore {
      // A batch that removes its first key and then fails, as a crash in the middle would.
      override async deleteMany(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void> {
        deletes++;
        await super.deleteMany(keys.slice(0, 1), options);
        throw new StoreError('unreachable', 'crash in the middle of the deletes', { key: keys[1] });
      }
    }
    await expect(prune({ store: new CrashingStore(scratch.store), graceMs: 0 })).rejects.toThrow(/crash in the middle/);
    await restoresAll(scratch.store, scratch.work, images);
    const rest = await prune({ store: scratch.store, graceMs: 0 });
    const remaining = (await scratch.raw.keys()).filter((k) => leftovers.includes(k));
    expect(remaining).toEqual([]);
    expect(rest.deleted.length).toBeLessThan(leftovers.length);
    await restoresAll(scratch.store, scratch.work, images);
  });
});

describe('prune of the golden fixture (page packs, summary blocks, patches, deduplicated regions)', () => {
  it('deletes exactly the leftovers added to it: every object a run names stays, every point restores as before', async () => {
    const repo = join(fixture.dir, 'golden-copy');
    await copyUncompactedFixture(join(import.meta.dirname, '..', 'fixtures', 'format6', 'repo'), repo);
    const store = openStore(repo);
    const index = await (await Repository.open(store)).fullIndex();
    const restored = async (tag: string): Promise<string[]> => {
      const out: string[] = [];
      for (let seq = 1; seq <= index.latest; seq++) {
        const target = join(fixture.dir, `golden-${tag}-${seq}.img`);
        await executeRestore(await planRestore({ store, at: parsePointSelector(String(seq)) }), { to: target });
        out.push(sha(await readFile(target)));
      }
      return out;
    };
    const before = await restored('before');
    const original = await listKeys(repo);
    const leftovers = [packKey(1, '00000001'), pagePackKey(index.latest, '00000002')];
    for (const key of leftovers) await store.put(key, Buffer.from(key));
    const result = await prune({ store, graceMs: 0 });
    expect(result.deleted.map((d) => d.key).sort()).toEqual(leftovers);
    expect(result.referenced).toBeGreaterThan(0);
    expect(await listKeys(repo)).toEqual(original);
    expect(await restored('after')).toEqual(before);
    expect((await verify({ store, readData: true, dryRun: true })).problems).toEqual([]);
  });
});

async function listKeys(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name).slice(root.length + 1)).sort();
}

describe('prune options', () => {
  it('--grace takes 0 or a duration; anything else is a usage error naming it', () => {
    expect(parseGrace('0s')).toBe(0);
    expect(parseGrace('0')).toBe(0);
    expect(parseGrace('24h')).toBe(24 * HOUR);
    expect(() => parseGrace('0x')).toThrow(/--grace "0x" is not a duration/);
    expect(() => parseGrace('soon')).toThrow(/--grace "soon" is not a duration/);
    expect(() => parseGrace('-1h')).toThrow(/--grace/);
  });

  it('--max-unused takes a percentage from 0% to 100% or unlimited; anything else is a usage error naming it, and prune refuses it before reading anything', async () => {
    expect(parseMaxUnused('5%')).toBe(0.05);
    expect(parseMaxUnused('0')).toBe(0);
    expect(parseMaxUnused('100')).toBe(1);
    expect(parseMaxUnused('unlimited')).toBe(Infinity);
    for (const bad of ['150%', '-5%', 'lots', '5 percent', '']) expect(() => parseMaxUnused(bad)).toThrow(/--max-unused ".*" is not a percentage from 0% to 100%/);
    await expect(prune({ store: openStore(join(fixture.dir, 'nowhere')), maxUnused: 2 })).rejects.toThrow(/--max-unused must be a percentage from 0% to 100%/);
  });
});
