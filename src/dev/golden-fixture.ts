// Writes the golden fixture repository (test/fixtures/format6): a small volume of 301 regions in
// two pages, six points in time made by backups, spans of fanout 2, runs forced into page
// packs, and regions stored as patches (on a stored base, on zeros, two deep, deduplicated);
// then points 2 and 4 forgotten and compacted (generation 1 of every run, the older versions
// left in place as a prune would until its grace passes), so every encoding of docs/FORMAT.md
// appears in it. Also records/: a forget, a prune and a compaction record of a larger history,
// a config with Object Lock and a retention record.
// Run once when the format changes on purpose:
// `npm run build && node dist/src/dev/golden-fixture.js test/fixtures/format6`.
// The tests read what is stored (test/repo/golden.test.ts); they never regenerate it.

import { createHash } from 'node:crypto';
import { cp, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { backup } from '../core/backup.js';
import { compact } from '../core/compact.js';
import { encodeConfig, newConfig } from '../repo/config.js';
import { encodeCompactionRecord, encodeForgetRecord, encodePruneRecord, encodeRetentionRecord } from '../repo/records.js';
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

export const GOLDEN_BLOCK = 4096;

/**
 * Points 5 and 6: block writes on top of point 4, [offset, length, fill], backed up with
 * `changed` ranges so the regions are stored as patches. Point 5 patches region 0 (a block) on
 * its stored base and region 10 (zeros until then) on zeros, and writes one byte of region 257
 * (a block); point 6 patches region 0 again (two patches deep) and gives region 11 region 10's
 * content (the composed region deduplicated).
 */
export const GOLDEN_BLOCK_WRITES: Array<Array<[number, number, number]>> = [
  [
    [3 * GOLDEN_BLOCK, GOLDEN_BLOCK, 0x51],
    [10 * GOLDEN_REGION + 5 * GOLDEN_BLOCK, 2 * GOLDEN_BLOCK, 0x52],
    [257 * GOLDEN_REGION + 100, 1, 0x53],
  ],
  [
    [15 * GOLDEN_BLOCK + 10, 20, 0x61],
    [11 * GOLDEN_REGION + 5 * GOLDEN_BLOCK, 2 * GOLDEN_BLOCK, 0x52],
  ],
];

/** Points forgotten and compacted away in the fixture (the others restore). */
export const GOLDEN_FORGOTTEN: Array<[number, number]> = [
  [2, 2],
  [4, 4],
];

/** Points in time in the fixture. */
export const GOLDEN_POINT_COUNT = GOLDEN_POINTS.length + GOLDEN_BLOCK_WRITES.length;

/** The volume's image at point `seq` (1 …). */
export function goldenImage(seq: number): Buffer {
  const image = Buffer.alloc(GOLDEN_SIZE);
  const point = GOLDEN_POINTS[Math.min(seq, GOLDEN_POINTS.length) - 1]!;
  for (const [region, fill] of Object.entries(point)) {
    const start = Number(region) * GOLDEN_REGION;
    image.fill(fill, start, Math.min(GOLDEN_SIZE, start + GOLDEN_REGION));
  }
  for (const writes of GOLDEN_BLOCK_WRITES.slice(0, Math.max(0, seq - GOLDEN_POINTS.length))) {
    for (const [offset, length, fill] of writes) image.fill(fill, offset, offset + length);
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
    blockSize: GOLDEN_BLOCK,
    volumeId: '5e1f0c2a-7c1d-4c7e-9b1a-0f6d2a3b4c5d',
    now: new Date('2026-12-01T00:00:00Z'),
  });
  await Repository.init(store, config);
  const source = join(dir, 'disk.img');
  const expected = [];
  for (let seq = 1; seq <= GOLDEN_POINT_COUNT; seq++) {
    const image = goldenImage(seq);
    await writeFile(source, image);
    const clock = (): number => Date.parse('2026-12-01T00:00:00Z') + seq * 60_000;
    const writes = GOLDEN_BLOCK_WRITES[seq - GOLDEN_POINTS.length - 1];
    // Points 2, 4 and 6 and their spans go to page packs (a writer's choice: readers take both
    // forms); span 02/4 then shares page 1 with span 01/2, the only child that changed it.
    const result = await backup({
      store,
      source,
      clock,
      workers: 1,
      inlineEntries: seq % 2 === 0 ? 1 : undefined,
      ...(writes === undefined ? {} : { changed: writes.map(([offset, length]) => ({ offset, length })) }),
    });
    expected.push({ seq: result.seq, kind: result.kind, time: result.time, sha256: createHash('sha256').update(image).digest('hex') });
  }
  await rm(source);
  await writeFile(join(dir, 'expected.json'), `${JSON.stringify(expected, null, 2)}\n`);

  // Points 2 and 4 forgotten (a forget record, as `cdp-s3 forget` writes it) and compacted.
  const created = Date.parse('2026-12-02T00:00:00Z');
  await store.put('forgets/0001796169600000-1f2e3d4c', encodeForgetRecord({ volumeId: config.volumeId, created, latest: GOLDEN_POINT_COUNT, ranges: GOLDEN_FORGOTTEN }));
  const repo = await Repository.open(store);
  await compact(repo, await repo.fullIndex(), { clock: () => created });

  // Records of a larger history, as bytes.
  const records = join(dir, 'records');
  await mkdir(records, { recursive: true });
  const volumeId = '6f1c1a52-0d0e-4f3b-9c55-2b8f3a7d9e10';
  const ranges: Array<[number, number]> = [[1, 4095], [4097, 8191], [19990, 19990]];
  await writeFile(join(records, 'forget.bin'), encodeForgetRecord({ volumeId, created: 1796630400000, latest: 20000, ranges }));
  await writeFile(
    join(records, 'prune.bin'),
    encodePruneRecord({
      volumeId,
      created: 1796630400000,
      latest: 20000,
      candidates: [
        { key: 'packs/0000000000000007-0badc0de', since: 1796544000000 },
        { key: 'deltas/0000000000004096', since: 1796630400000 },
      ],
    }),
  );
  await writeFile(join(records, 'compaction.bin'), encodeCompactionRecord({ volumeId, generation: 3, created: 1796630400000, latest: 20000, ranges }));
  // Object Lock: a config with `objectLock`, and the record of a retention extension.
  const locked = newConfig({ volumeSize: 1 << 30, volumeId, now: new Date(1796630400000), objectLock: { mode: 'compliance', days: 30 } });
  await writeFile(join(records, 'config-object-lock.bin'), encodeConfig(locked));
  await writeFile(join(records, 'retention.bin'), encodeRetentionRecord({ volumeId, at: 1796630400000, until: 1799222400000, extended: 70123 }));
}

if (process.argv[1]?.endsWith('golden-fixture.js')) {
  main(process.argv[2] ?? 'test/fixtures/format6').catch((error: unknown) => {
    process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
    process.exit(1);
  });
}

/**
 * A copy of the fixture at `to` as it was before the forget and the compaction: their records
 * and the generation-1 runs left out (tests that damage or prune the six points use it).
 */
export async function copyUncompactedFixture(fixture: string, to: string): Promise<void> {
  await cp(fixture, to, {
    recursive: true,
    filter: (path) => !/(?:^|\/)(?:forgets|compactions)(?:\/|$)/.test(path.slice(fixture.length)) && !/\.\d{8}$/.test(path),
  });
}
