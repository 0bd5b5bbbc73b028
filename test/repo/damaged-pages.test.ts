// Damage to pages, on a copy of the golden fixture (docs/FORMAT.md: delta 2 and spans 01/2,
// 01/4 and 02/4 keep their pages in page packs; 02/4 shares page 1 with 01/2). A span's page is
// derived data: readers fall back to its children and no point is lost. A delta's page is not:
// the points that need it, and no readable span stands in for, are named by verify, marked
// damaged, and passed over by restore. A page of another volume is refused.

import { createHash } from 'node:crypto';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { verify } from '../../src/core/verify.js';
import { copyUncompactedFixture, goldenImage } from '../../src/dev/golden-fixture.js';
import { decodeConfig } from '../../src/repo/config.js';
import { type RootContext, decodeDeltaRoot, decodePage, decodeSpanRoot, encodePage, encodeSpanRoot } from '../../src/repo/run-codec.js';
import { FsStore } from '../../src/store/fs.js';

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'format6', 'repo');
let dir: string;
let repo: string;
let context: RootContext;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-s3-pages-'));
  repo = join(dir, 'repo');
  await copyUncompactedFixture(FIXTURE, repo);
  const config = decodeConfig(await readFile(join(repo, 'config')));
  const regionCount = Math.ceil(config.volumeSize / config.regionSize);
  context = { volumeId: config.volumeId, pageRegions: config.pageRegions, regionCount, pageTotal: Math.ceil(regionCount / config.pageRegions) };
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const sha = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/** The points a span key names (the fixture's fanout is 2). */
function spanBlock(key: string): { level: number; first: number; last: number } {
  const level = Number(key.split('/')[1]);
  const last = Number(key.split('/')[2]);
  return { level, first: last - 2 ** level + 1, last };
}

/** Where page `page` of a run's root is stored. */
async function pageRef(key: string, page: number) {
  const bytes = await readFile(join(repo, key));
  const root = key.startsWith('deltas/')
    ? decodeDeltaRoot(bytes, Number(key.slice(-16)), context)
    : decodeSpanRoot(bytes, spanBlock(key), context);
  return root.pages.find((p) => p.page === page)!.ref!;
}

async function flipByteAt(key: string, at: number): Promise<void> {
  const path = join(repo, key);
  const bytes = await readFile(path);
  bytes[at]! ^= 0x5a;
  await writeFile(path, bytes);
}

async function restores(at: string) {
  const plan = await planRestore({ store: new FsStore(repo), at: parsePointSelector(at) });
  const target = join(dir, `r-${plan.seq}-${Math.random().toString(16).slice(2)}.img`);
  await executeRestore(plan, { to: target, workers: 1 });
  return { seq: plan.seq, skipped: plan.skipped.map((s) => `${s.seq} ${s.kinds.join('+')}`), same: sha(await readFile(target)) === sha(goldenImage(plan.seq)) };
}

describe('damaged pages', () => {
  it("a span's page: read from its children instead; verify names the span, no point is affected", async () => {
    const ref = await pageRef('spans/01/0000000000000004', 0);
    await flipByteAt(ref.pack, ref.offset + 20);
    for (const at of ['3', '4']) expect(await restores(at)).toMatchObject({ seq: Number(at), skipped: [], same: true });
    const found = await verify({ store: new FsStore(repo), readData: true, workers: 1, dryRun: true });
    expect(found.problems).toEqual([
      expect.objectContaining({ object: 'span', key: 'spans/01/0000000000000004', detail: expect.stringMatching(/page 0: does not match its SHA-256/), affects: [] }),
    ]);
    expect(found.damaged).toEqual([]);
  });

  it("a delta's page lost with the spans over it: the points that need it are named, marked damaged and passed over", async () => {
    // Delta 2's page 1, then span 01/2's page 1, which span 02/4 shares: points 2 to 6 need delta 2 now.
    const delta = await pageRef('deltas/0000000000000002', 1);
    await flipByteAt(delta.pack, delta.offset + delta.length - 5);
    expect(await restores('latest')).toMatchObject({ seq: 6, same: true }); // the spans stand in for it
    const shared = await pageRef('spans/01/0000000000000002', 1);
    expect(await pageRef('spans/02/0000000000000004', 1)).toEqual(shared);
    await rm(join(repo, shared.pack)); // the whole page pack is gone
    // Before a verify, the damage is found while restoring (integrity, nothing written)…
    await expect(restores('latest')).rejects.toThrow(/delta 0000000000000002.*page 1/);
    const found = await verify({ store: new FsStore(repo), readData: true, workers: 1 });
    expect(found.problems).toContainEqual(expect.objectContaining({ object: 'delta', key: 'deltas/0000000000000002', affects: [2, 3, 4, 5, 6] }));
    expect(found.problems.filter((p) => p.object === 'span').map((p) => p.key).sort()).toEqual(['spans/01/0000000000000002', 'spans/02/0000000000000004']);
    expect(found.damaged).toEqual([2, 3, 4, 5, 6]);
    // …and after it, restore passes over the marked points.
    expect(await restores('latest')).toEqual({ seq: 1, skipped: ['6 damaged', '5 damaged', '4 damaged', '3 damaged', '2 damaged'], same: true });
  });

  it('a page of another volume (a crafted root naming it, with its right digest) is refused: the span is replaced by its children', async () => {
    const key = 'spans/01/0000000000000004';
    const block = spanBlock(key);
    const root = decodeSpanRoot(await readFile(join(repo, key)), block, context);
    const ref = root.pages[0]!.ref!;
    const page = decodePage((await readFile(join(repo, ref.pack))).subarray(ref.offset, ref.offset + ref.length), 0, context, key);
    // The same entries as another volume's page, appended to the page pack and named by the root.
    const foreign = Buffer.from(encodePage(page, '00000000-0000-4000-8000-000000000000', context.pageRegions));
    const packPath = join(repo, ref.pack);
    const pack = await readFile(packPath);
    await writeFile(packPath, Buffer.concat([pack, foreign]));
    const forged = { ...ref, offset: pack.length, length: foreign.length, digest: createHash('sha256').update(foreign).digest() };
    const pages = root.pages.map((p, i) => (i === 0 ? { ...p, ref: forged } : p));
    await writeFile(join(repo, key), encodeSpanRoot({ ...block, end: root.end }, pages, { inline: root.summaries! }, context.volumeId));
    expect(await restores('4')).toMatchObject({ seq: 4, skipped: [], same: true });
    const found = await verify({ store: new FsStore(repo), workers: 1, dryRun: true });
    expect(found.problems).toEqual([expect.objectContaining({ object: 'span', key, detail: expect.stringMatching(/page 0: belongs to another volume/), affects: [] })]);
  });
});
