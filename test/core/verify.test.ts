// verify: damage made the honest way (bytes changed or objects removed in the store directly),
// reported with exactly the points in time it affects, recorded so restore avoids them, and
// repaired by the next backup while the primary still holds the content.

import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { scan } from '../../src/core/scan.js';
import { verify } from '../../src/core/verify.js';
import { loadMap } from '../helpers/pit.js';
import { seqName } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { cli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { type ScratchRepository, useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
const REGIONS = 40;
const BUCKET = 'verify';
const fixture = useS3Fixture('verify', [BUCKET]);
let counter = 0;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

interface Fixture extends ScratchRepository {
  source: string;
  /** The image at each point in time. */
  points: Map<number, string>;
}

/** Points in time 1 (base), 2 (region 5 rewritten) and 3 (region 9 rewritten); packs of 4 regions. */
async function makeFixture(kind: 'fs' | 's3'): Promise<Fixture> {
  const n = ++counter;
  const { work, repoUrl, store, raw } = await fixture.repository(kind, BUCKET, n);
  const image = makeImage({ size: REGIONS * REGION, regionSize: REGION, seed: n, zero: 0, repeated: 0 });
  const source = join(work, 'disk.img');
  await writeFile(source, image);
  // Uncompressed: tests damage stored bytes at known places and count the bytes stored.
  await init({ store, from: source, regionSize: REGION, packSize: 4 * (REGION + 1), spanFanout: 2, compression: 'off' }); // 4 regions a pack, each in its frame
  const points = new Map<number, string>();
  await backup({ store, source, workers: 2 });
  points.set(1, sha(image));
  for (const [seq, region] of [
    [2, 5],
    [3, 9],
  ] as const) {
    image.fill(seq, region * REGION, region * REGION + 5000);
    await writeFile(source, image);
    await backup({ store, source, workers: 2 });
    points.set(seq, sha(image));
  }
  return { store, repoUrl, raw, source, work, points };
}

/** Where region `region` of point in time `seq` is stored. */
async function locationOf(f: Fixture, seq: number, region: number): Promise<{ pack: string; offset: number }> {
  const repo = await Repository.open(f.store);
  return (await loadMap(repo, seq)).location(region)!;
}

async function restored(f: Fixture, at: string): Promise<{ seq: number; digest: string }> {
  const plan = await planRestore({ store: f.store, at: parsePointSelector(at) });
  const target = join(f.work, `r-${++counter}.img`);
  await executeRestore(plan, { to: target, workers: 2 });
  return { seq: plan.seq, digest: sha(await readFile(target)) };
}

for (const kind of ['fs', 's3'] as const) {
  describe(`verify (${kind} store)`, () => {
    it('finds nothing wrong in a sound repository, and --read-data reads every stored region', async () => {
      const f = await makeFixture(kind);
      const result = await verify({ store: f.store, readData: true, workers: 2 });
      expect(result.problems).toEqual([]);
      expect(result.deltas).toBe(3);
      expect(result.locationsRead).toBe(result.locations);
      expect(result.locations).toBe(REGIONS + 2);
    });

    it('a corrupt region affects exactly the points whose PIT map uses it; restore avoids them; the next backup repairs it', async () => {
      const f = await makeFixture(kind);
      const where = await locationOf(f, 2, 5); // written by delta 2, never rewritten: affects 2 and 3
      const pack = await f.raw.get(where.pack);
      pack[where.offset + 100] = pack[where.offset + 100]! ^ 0xff;
      await f.raw.put(where.pack, pack);

      expect((await verify({ store: f.store, workers: 2 })).problems).toEqual([]); // sizes are fine: only reading finds it
      const result = await verify({ store: f.store, readData: true, workers: 2 });
      expect(result.problems).toHaveLength(1);
      expect(result.problems[0]).toMatchObject({ object: 'region', key: where.pack, affects: [2, 3] });
      expect(result.damaged).toEqual([2, 3]);
      // The marks key carries the newest point this verify had seen (3): what it can concern, if it is ever unreadable.
      expect(await f.raw.keys('marks/')).toEqual([expect.stringMatching(new RegExp(`^marks/\\d{16}-${seqName(3)}-[0-9a-f]{8}$`))]);

      // log says what the mark is: damaged, not suspect.
      const logged = await cli('--repo', f.repoUrl, 'log');
      expect(logged.stdout).toMatch(/^\s*2 .* DAMAGED$/m);
      expect(logged.stdout).toMatch(/^\s*3 .* DAMAGED$/m);
      expect(logged.stdout).not.toContain('SUSPECT');
      const latest = await restored(f, 'latest');
      expect(latest).toEqual({ seq: 1, digest: f.points.get(1) });
      // The primary still holds region 5's content: the next backup stores it again.
      const next = await backup({ store: f.store, source: f.source, workers: 2 });
      expect(next.regionsChanged).toBe(1);
      expect(next.bytesStored).toBe(REGION + 1); // its frame: a codec byte, then the region
      expect(await restored(f, 'latest')).toEqual({ seq: 4, digest: f.points.get(3) });
      // A second verify lists the old damage as known (exit 0 through the CLI) and marks nothing new.
      const again = await verify({ store: f.store, readData: true, workers: 2 });
      expect(again.problems.map((p) => [p.affects, p.known])).toEqual([[[2, 3], true]]);
      expect(again.newProblems).toBe(0);
      expect(again.damaged).toEqual([]);
      const cliAgain = await cli('--repo', f.repoUrl, 'verify', '--read-data');
      expect(cliAgain.code, cliAgain.stderr).toBe(0);
      expect(cliAgain.stdout).toMatch(/already recorded .*\n\s+region packs\/\S+: .* — points in time 2, 3\nno new problems\n?$/);
    });

    it('a scan also stores damaged regions again, and the repaired point restores bit-exact', async () => {
      const f = await makeFixture(kind);
      const where = await locationOf(f, 3, 9); // written by delta 3
      const pack = await f.raw.get(where.pack);
      pack[where.offset + 7] = pack[where.offset + 7]! ^ 0x01;
      await f.raw.put(where.pack, pack);
      expect((await verify({ store: f.store, readData: true, workers: 2 })).damaged).toEqual([3]);
      const result = await scan({ store: f.store, source: f.source, workers: 2 });
      expect(result.discrepancies).toBe(0); // the disk matches the digests; only the stored copy was bad
      expect(result.reuploaded).toBe(1);
      expect(result.fixupSeq).toBe(4);
      expect(await restored(f, 'latest')).toEqual({ seq: 4, digest: f.points.get(3) });
      expect((await verify({ store: f.store, readData: true, workers: 2 })).damaged).toEqual([]);
    });

    it('a missing pack is found without reading data, with the points it affects', async () => {
      const f = await makeFixture(kind);
      const where = await locationOf(f, 1, 9); // the base copy of region 9, rewritten by delta 3
      await f.raw.delete(where.pack);
      const text = await cli('--repo', f.repoUrl, 'verify');
      expect(text.code).toBe(7);
      expect(text.stdout.split('\n').filter((line) => line.includes(where.pack))).toEqual([
        `  pack ${where.pack}: missing (4 stored regions) — affects points in time 1, 2, 3`,
      ]);
      // Recorded by that verify: listed again as known, and no longer exit 7.
      const result = await verify({ store: f.store, workers: 2 });
      // One problem for the pack (regions 8 to 11 of the base; 9 was rewritten by delta 3), not one per region in it.
      expect(result.problems).toEqual([{ object: 'pack', key: where.pack, detail: 'missing', affects: [1, 2, 3], regions: 4, known: true }]);
      expect(result.newProblems).toBe(0);
      expect((await cli('--repo', f.repoUrl, 'verify')).code).toBe(0);
    });

    it('a missing delta breaks every later point no span stands in for; a damaged span affects none', async () => {
      const f = await makeFixture(kind);
      await f.raw.put('spans/01/0000000000000002', Buffer.from('not a span at all, far too short'));
      const damagedSpan = await verify({ store: f.store, dryRun: true, workers: 2 });
      expect(damagedSpan.problems).toEqual([expect.objectContaining({ object: 'span', affects: [] })]);
      await f.raw.delete('deltas/0000000000000002');
      const result = await verify({ store: f.store, workers: 2 });
      expect(result.problems).toContainEqual(expect.objectContaining({ object: 'delta', key: 'deltas/0000000000000002', detail: 'missing', affects: [2, 3] }));
      expect(result.damaged).toEqual([2, 3]);
    });

    it('--read-data-subset reads a different slice each run until every pack was read', async () => {
      const f = await makeFixture(kind);
      const seen = new Set<number>();
      let total = 0;
      for (let run = 0; run < 4; run++) {
        const result = await verify({ store: f.store, readDataSubset: 25, workers: 2 });
        expect(result.subset).toEqual({ percent: 25, slice: run, slices: 4 });
        seen.add(result.subset!.slice);
        total += result.locationsRead;
      }
      expect(seen.size).toBe(4);
      expect(total).toBe(REGIONS + 2);
      const bad = await cli('--repo', f.repoUrl, 'verify', '--read-data-subset', '150');
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/^cdp-s3: --read-data-subset 150 is out of range/);
    });
  });
}
