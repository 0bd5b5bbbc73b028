import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { log } from '../../src/core/log.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { loadMap } from '../helpers/pit.js';
import { FRAME_HEADER_BYTES } from '../../src/repo/pieces.js';
import { Repository } from '../../src/repo/repository.js';
import { openStore } from '../../src/store/open.js';
import { makeImage, mutateImage } from '../helpers/images.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-core-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('backup and restore through the local store', () => {
  it('restores every round bit-exact by sequence number and by time', async () => {
    const regionSize = 64 * 1024;
    const image = makeImage({ size: 3 * 1024 * 1024 + 12345, regionSize, seed: 7 });
    const source = join(dir, 'disk.img');
    await writeFile(source, image);
    const store = openStore(join(dir, 'repo'));
    await init({ store, from: source, regionSize, spanFanout: 3 });
    const rounds: Array<{ seq: number; time: string; copy: Buffer }> = [];
    for (let round = 0; round < 5; round++) {
      if (round > 0) {
        mutateImage(image, 5, round);
        await writeFile(source, image);
      }
      // A clock that stands still: each point in time is still later than the last (by 1 ms), so
      // choosing by time tells them apart however fast the backups run.
      const result = await backup({ store, source, clock: () => 1_700_000_000_000 });
      expect(result.seq).toBe(round + 1);
      rounds.push({ seq: result.seq, time: result.time, copy: Buffer.from(image) });
    }
    const entries = (await log({ store })).entries;
    expect(entries.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(entries[0]!.kind).toBe('base');
    for (const round of rounds) {
      for (const at of [String(round.seq), round.time]) {
        const plan = await planRestore({ store, at: parsePointSelector(at) });
        expect(plan.seq).toBe(round.seq);
        const target = join(dir, `restored-${round.seq}-${at.length}.img`);
        await executeRestore(plan, { to: target });
        expect((await readFile(target)).equals(round.copy), `round ${round.seq} via ${at}`).toBe(true);
      }
    }
    const unchanged = await backup({ store, source });
    expect(unchanged.regionsChanged).toBe(0);
    expect(unchanged.bytesStored).toBe(0);
  });
});

describe('pack layout', () => {
  it('packs the regions of a backup in volume order, whatever order the threads finish in', async () => {
    const regionSize = 64 * 1024;
    const perPack = 16;
    const packSize = perPack * (regionSize + FRAME_HEADER_BYTES); // 16 regions, each in its frame
    const image = randomBytes(8 * 1024 * 1024); // no zeros, no repeats: every region is stored
    const source = join(dir, 'ordered.img');
    await writeFile(source, image);
    const store = openStore(join(dir, 'ordered-repo'));
    await init({ store, from: source, regionSize, packSize });
    const { seq } = await backup({ store, source, workers: 2 });
    const repo = await Repository.open(store);
    const pit = await loadMap(repo, seq);
    let adjacent = 0;
    for (let region = 1; region < repo.geometry.regionCount; region++) {
      const before = pit.location(region - 1)!;
      const here = pit.location(region)!;
      // Each region is a frame: a codec byte, then its bytes (random: stored as they are).
      if (before.pack === here.pack && before.offset + FRAME_HEADER_BYTES + regionSize === here.offset) adjacent++;
      else expect(here.offset, `region ${region} starts a pack`).toBeLessThan(before.offset);
    }
    // Every neighbour follows its predecessor in the same pack, except where a new pack starts.
    expect(adjacent).toBe(repo.geometry.regionCount - 1 - (repo.geometry.regionCount / perPack - 1));
  });
});
