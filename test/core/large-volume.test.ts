// A 15 TiB volume (15 Mi regions of 1 MiB) end to end: a thin image with a few writes scattered
// over it backs up, scans, verifies and restores in seconds, reading only the allocated extents
// and holding no per-region structure but bitmaps. ext4 caps a file just below 16 TiB.

import { createHash } from 'node:crypto';
import { mkdtemp, open, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore, planTotals } from '../../src/core/restore.js';
import { scan } from '../../src/core/scan.js';
import { verify } from '../../src/core/verify.js';
import { openStore } from '../../src/store/open.js';
import { canFindHoles } from '../../src/volume/extents.js';
import { requireOrSkip } from '../helpers/requirements.js';

const TIB = 2 ** 40;
const SIZE = 15 * TIB;
const MIB = 2 ** 20;
let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-s3-15tib-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes `fill` bytes at each offset of a file. */
async function writeAt(path: string, writes: Array<[number, number, number]>): Promise<void> {
  const handle = await open(path, 'r+');
  try {
    for (const [at, length, fill] of writes) await handle.write(Buffer.alloc(length, fill), 0, length, at);
  } finally {
    await handle.close();
  }
}

async function readAt(path: string, at: number, length: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const out = Buffer.alloc(length);
    await handle.read(out, 0, length, at);
    return out;
  } finally {
    await handle.close();
  }
}

describe('a 15 TiB thin volume', () => {
  it('backs up, scans, verifies and restores reading only what is allocated', async (context) => {
    requireOrSkip(context, canFindHoles() ? undefined : 'the optional fs-ext (lseek SEEK_DATA) is not installed');
    const image = join(dir, 'disk.img');
    await writeFile(image, '');
    try {
      await truncate(image, SIZE);
    } catch (error) {
      requireOrSkip(context, `the file system under ${dir} holds no 15 TiB file (${(error as NodeJS.ErrnoException).code})`);
    }
    // The first and last regions, one in the middle (a write across two regions), and a short one.
    const writes: Array<[number, number, number]> = [
      [0, 4096, 1],
      [5 * TIB - 2048, 4096, 2],
      [SIZE - 4096, 4096, 3],
    ];
    await writeAt(image, writes);
    const store = openStore(join(dir, 'repo'));
    const { config } = await init({ store, from: image, compression: 'off' });
    expect(Math.ceil(config.volumeSize / config.regionSize)).toBe(15 * MIB);

    const base = await backup({ store, source: image });
    expect(base).toMatchObject({ seq: 1, kind: 'base', dataRegions: 4, regionsChanged: 4, bytesScanned: 4 * MIB });
    expect(base.metadataBytes).toBeLessThan(64 * 1024); // a base of what is allocated, not of 15 Mi regions

    await writeAt(image, [[7 * TIB, 4096, 4]]);
    const next = await backup({ store, source: image });
    expect(next).toMatchObject({ seq: 2, regionsChanged: 1, bytesStored: MIB + 1, bytesScanned: 5 * MIB }); // its frame: a codec byte, then the region

    const scanned = await scan({ store, source: image });
    expect(scanned).toMatchObject({ scanned: 15 * MIB, discrepancies: 0, fixupSeq: undefined });
    const verified = await verify({ store, readData: true });
    expect(verified).toMatchObject({ problems: [], locations: 5, locationsRead: 5 });

    const plan = await planRestore({ store, at: parsePointSelector('latest') });
    expect(await planTotals(plan)).toMatchObject({ dataRegions: 5, zeroRegions: 15 * MIB - 5, downloadBytes: 5 * (MIB + 1) });
    const target = join(dir, 'restored.img');
    await executeRestore(plan, { to: target });
    for (const [at, length, fill] of [...writes, [7 * TIB, 4096, 4] as [number, number, number]]) {
      expect((await readAt(target, at, length)).equals(Buffer.alloc(length, fill)), `bytes at ${at}`).toBe(true);
    }
    // Holes stay holes: the restored file allocates only the five regions.
    const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
    expect(sha(await readAt(target, 9 * TIB, MIB))).toBe(sha(Buffer.alloc(MIB)));
    expect((await stat(target)).blocks * 512).toBeLessThanOrEqual(6 * MIB);
  });
});
