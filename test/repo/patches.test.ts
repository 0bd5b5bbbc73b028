// Regions stored as patches (docs/FORMAT.md, "Patches"), read back through every reader: restore
// to a file, to a device-like target in place (--reuse-target), to standard output, serve, and
// verify --read-data; and damage to a base or a patch, which must name the points it costs and
// never let a composed region that fails its digest be written anywhere.

import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore, planTotals } from '../../src/core/restore.js';
import { PitExport } from '../../src/core/serve.js';
import { verify } from '../../src/core/verify.js';
import { Repository } from '../../src/repo/repository.js';
import { loadDelta } from '../helpers/pit.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
const BLOCK = 4096;
const REGIONS = 24;
const fixture = useS3Fixture('patches', ['patches']);
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
let counter = 0;

/**
 * A repository whose regions 0–11 carry patch chains: a base (point 1, regions 0–15 random,
 * the rest zeros), then three points each writing a few blocks of every region 0–11 (patches
 * back to back in each delta's pack) and of region 20 (patches on zeros). Returns the images.
 */
async function patchedRepository(kind: 'fs' | 's3') {
  const scratch = await fixture.repository(kind, 'patches', ++counter);
  const source = join(scratch.work, 'disk.img');
  const image = Buffer.alloc(REGIONS * REGION);
  for (let i = 0; i < 16 * REGION; i += 512) image.fill((i / 512) % 251, i, i + 512);
  await writeFile(source, image);
  // Uncompressed: the tests damage stored bytes at known places of a patch.
  await init({ store: scratch.store, from: source, regionSize: REGION, compression: 'off' });
  await backup({ store: scratch.store, source, workers: 2 });
  const images = [Buffer.from(image)];
  for (let round = 1; round <= 3; round++) {
    const changed = [];
    for (const region of [...Array.from({ length: 12 }, (_, i) => i), 20]) {
      const offset = region * REGION + ((round * 3 + region) % 16) * BLOCK + round;
      const length = 100 + round * 1000;
      image.fill(0x40 + round * 16 + (region % 16), offset, offset + length);
      changed.push({ offset, length });
    }
    await writeFile(source, image);
    await backup({ store: scratch.store, source, workers: 2, changed });
    images.push(Buffer.from(image));
  }
  return { ...scratch, source, images };
}

async function restoreTo(store: Repository['store'], at: string, target: string, options: { reuseTarget?: boolean; force?: boolean } = {}) {
  const plan = await planRestore({ store, at: parsePointSelector(at) });
  return executeRestore(plan, { to: target, workers: 2, ...options });
}

for (const kind of ['fs', 's3'] as const) {
  describe(`patches on every read path (${kind} store)`, () => {
    it('backup --changed stores the changed blocks as patches, chained up to three deep and on zeros', async () => {
      const r = await patchedRepository(kind);
      const repo = await Repository.open(r.store);
      const delta = await loadDelta(repo, 4);
      expect(delta.locations.get(0)!.patches).toHaveLength(3);
      expect(delta.locations.get(0)!.base).toBeDefined();
      expect(delta.locations.get(20)!.patches).toHaveLength(3);
      expect(delta.locations.get(20)!.base).toBeUndefined();
      // Three points of 13 regions, each a patch of one or two blocks, not 13 regions each.
      expect((await loadDelta(repo, 2)).locations.size).toBe(13);
    });

    it('restore to a file, in place and to standard output compose each point bit-exact; the plan counts the pieces', async () => {
      const r = await patchedRepository(kind);
      for (const [i, image] of r.images.entries()) {
        const target = join(r.work, `point-${i + 1}.img`);
        const result = await restoreTo(r.store, String(i + 1), target);
        expect(sha(await readFile(target)), `point ${i + 1}`).toBe(sha(image));
        // Point 4: 12 regions composed from a base and three patches, in few GETs (patches of
        // neighbouring regions lie back to back in each delta's pack).
        if (i === 3) {
          expect(result.totals.dataRegions).toBe(17);
          expect(result.totals.requests).toBeLessThanOrEqual(8);
          expect(await planTotals(await planRestore({ store: r.store, at: parsePointSelector('4') }))).toEqual(result.totals);
        }
      }
      // In place onto point 1's image: only the regions that differ are fetched and composed.
      const target = join(r.work, 'reuse.img');
      await writeFile(target, r.images[0]!);
      const reused = await restoreTo(r.store, '4', target, { reuseTarget: true });
      expect(reused.regionsReused).toBe(REGIONS - 13);
      expect(sha(await readFile(target))).toBe(sha(r.images[3]!));
      // Standard output, in volume order.
      const out = new PassThrough();
      const chunks: Buffer[] = [];
      out.on('data', (chunk: Buffer) => chunks.push(chunk));
      const plan = await planRestore({ store: r.store, at: parsePointSelector('3') });
      await executeRestore(plan, { to: '-', stdout: out, workers: 2 });
      expect(sha(Buffer.concat(chunks))).toBe(sha(r.images[2]!));
    });

    it('serve composes what a client reads, random and sequential, with read-ahead', async () => {
      const r = await patchedRepository(kind);
      const served = await PitExport.open({ store: r.store, at: parsePointSelector('4'), workers: 2 });
      try {
        // A random read across a region boundary and into a patched block…
        const at = 5 * REGION - 100;
        expect(sha(await served.read(at, 3000))).toBe(sha(r.images[3]!.subarray(at, at + 3000)));
        // …then the whole volume sequentially, in client-sized reads.
        const whole = Buffer.alloc(REGIONS * REGION);
        for (let offset = 0; offset < whole.length; offset += 96 * 1024) {
          const length = Math.min(96 * 1024, whole.length - offset);
          await served.readInto(offset, whole.subarray(offset, offset + length));
        }
        expect(sha(whole)).toBe(sha(r.images[3]!));
        expect(served.stats.integrityErrors).toBe(0);
      } finally {
        await served.close();
      }
    });

    it('verify --read-data reads every base and patch once; a damaged patch names exactly the points that need it', async () => {
      const r = await patchedRepository(kind);
      const clean = await verify({ store: r.store, readData: true, workers: 2, dryRun: true });
      expect(clean.problems).toEqual([]);
      expect(clean.locationsRead).toBe(clean.locations);
      // Delta 3's patch of region 5: points 3 and 4 need it (their regions 5 compose through it).
      const repo = await Repository.open(r.store);
      const patch = (await loadDelta(repo, 3)).locations.get(5)!.patches.at(-1)!;
      const pack = Buffer.from(await r.raw.get(patch.pack));
      pack[patch.offset + 40]! ^= 0xff;
      await r.raw.put(patch.pack, pack);
      // Restore of point 4 refuses (the region does not compose to its digest) and writes nothing.
      const target = join(r.work, 'never.img');
      await expect(restoreTo(r.store, '4', target)).rejects.toThrow(/region 5 composed of its base and 3 patches/);
      await expect(readFile(target)).rejects.toThrow();
      const found = await verify({ store: r.store, readData: true, workers: 2 });
      expect(found.problems).toEqual([expect.objectContaining({ object: 'region', key: patch.pack, affects: [3, 4], regions: 1 })]);
      expect(found.damaged).toEqual([3, 4]);
      // Restore now passes over the damaged points; point 2 is intact.
      const result = await restoreTo(r.store, 'latest', join(r.work, 'latest.img'));
      expect(result.seq).toBe(2);
      expect(sha(await readFile(join(r.work, 'latest.img')))).toBe(sha(r.images[1]!));
    });

    it("a patch's base lost: every point whose region composes on it is named, and restore refuses to write any", async () => {
      const r = await patchedRepository(kind);
      const repo = await Repository.open(r.store);
      // The base of region 3 is in point 1's pack; points 1 to 4 all need it.
      const base = (await loadDelta(repo, 4)).locations.get(3)!.base!;
      await r.raw.delete(base.pack);
      const found = await verify({ store: r.store, readData: true, workers: 2 });
      expect(found.problems).toEqual([expect.objectContaining({ object: 'pack', key: base.pack, detail: 'missing', affects: [1, 2, 3, 4] })]);
      expect(found.damaged).toEqual([1, 2, 3, 4]);
      await expect(restoreTo(r.store, 'latest', join(r.work, 'x.img'))).rejects.toThrow(/no point in time|suspect|damaged/);
    });
  });
}
