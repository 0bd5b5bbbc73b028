// Writes the golden fixture repository (test/fixtures/format2): a small volume of 301 regions in
// two pages, four points in time made by backups, spans of fanout 2, and runs forced into page
// packs, so every encoding of docs/FORMAT.md appears in it. Run once when the format changes on
// purpose: `npm run build && node dist/src/dev/golden-fixture.js test/fixtures/format2`.
// The tests read what is stored (test/repo/golden.test.ts); they never regenerate it.

import { createHash } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { backup } from '../core/backup.js';
import { newConfig } from '../repo/config.js';
import { Repository } from '../repo/repository.js';
import { FsStore } from '../store/fs.js';

export const GOLDEN_REGION = 64 * 1024;
/** 300 whole regions and a short last one. */
export const GOLDEN_SIZE = 300 * GOLDEN_REGION + 1000;

/**
 * The volume at each point in time: region → fill byte (absent: zeros). Point 3 zeroes region 2;
 * point 4 writes region 5 with region 1's content (deduplicated: no upload).
 */
export const GOLDEN_POINTS: Array<Record<number, number>> = [
  { 0: 0x11, 1: 0x12, 2: 0x13, 257: 0x14, 300: 0x15 },
  { 0: 0x11, 1: 0x22, 2: 0x13, 257: 0x14, 258: 0x23, 300: 0x15 },
  { 0: 0x31, 1: 0x22, 257: 0x14, 258: 0x23, 300: 0x15 },
  { 0: 0x31, 1: 0x22, 5: 0x22, 257: 0x14, 258: 0x23, 300: 0x15 },
];

export function goldenImage(point: Record<number, number>): Buffer {
  const image = Buffer.alloc(GOLDEN_SIZE);
  for (const [region, fill] of Object.entries(point)) {
    const start = Number(region) * GOLDEN_REGION;
    image.fill(fill, start, Math.min(GOLDEN_SIZE, start + GOLDEN_REGION));
  }
  return image;
}

async function main(dir: string): Promise<void> {
  const repoDir = join(dir, 'repo');
  await rm(repoDir, { recursive: true, force: true });
  await mkdir(repoDir, { recursive: true });
  const store = new FsStore(repoDir);
  const config = newConfig({
    volumeSize: GOLDEN_SIZE,
    regionSize: GOLDEN_REGION,
    packSize: 4 * GOLDEN_REGION,
    spanFanout: 2,
    pageRegions: 256,
    volumeId: '5e1f0c2a-7c1d-4c7e-9b1a-0f6d2a3b4c5d',
    now: new Date('2026-12-01T00:00:00Z'),
  });
  await Repository.init(store, config);
  const source = join(dir, 'disk.img');
  const expected = [];
  for (const [i, point] of GOLDEN_POINTS.entries()) {
    const image = goldenImage(point);
    await writeFile(source, image);
    const clock = (): number => Date.parse('2026-12-01T00:00:00Z') + (i + 1) * 60_000;
    // Points 2 and 4 and their spans go to page packs (a writer's choice: readers take both
    // forms); span 02/4 then shares page 1 with span 01/2, the only child that changed it.
    const result = await backup({ store, source, clock, workers: 1, inlineEntries: i % 2 === 1 ? 1 : undefined });
    expected.push({ seq: result.seq, kind: result.kind, time: result.time, sha256: createHash('sha256').update(image).digest('hex') });
  }
  await rm(source);
  await writeFile(join(dir, 'expected.json'), `${JSON.stringify(expected, null, 2)}\n`);
}

if (process.argv[1]?.endsWith('golden-fixture.js')) {
  main(process.argv[2] ?? 'test/fixtures/format2').catch((error: unknown) => {
    process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  });
}
