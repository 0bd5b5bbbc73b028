// The paged chain end to end in the repository layer: deltas built with RunBuilder, spans
// written at each multiple of the fanout, and every point's PIT map (read page by page through
// the runs of its cover) equal to a model that folds the same entries. Also the fallbacks: a
// span that is missing or damaged is replaced by its children; a missing delta only breaks the
// points no span stands in for.

import { mkdtemp, rm, unlink, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { type StoredRegion } from '../../src/model/regions.js';
import { ChainGapError } from '../../src/repo/chain-index.js';
import { newConfig } from '../../src/repo/config.js';
import { deltaKey, packKey, spanKey } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { RunBuilder } from '../../src/repo/run-builder.js';
import { FsStore } from '../../src/store/fs.js';
import type { ListOptions, ObjectInfo, ObjectStore } from '../../src/store/types.js';
import { DelegatingStore } from '../../src/store/delegating.js';
import { seededRandom } from '../helpers/random.js';

interface ModelEntry {
  location: StoredRegion | undefined;
  digest: Uint8Array;
}

/** Counts LIST requests (each listing call is one or more requests; here: one call = one). */
class CountingLists extends DelegatingStore {
  lists = 0;
  gets = 0;
  override list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    this.lists++;
    return super.list(prefix, options);
  }
  override get(key: string, options?: Parameters<ObjectStore['get']>[1]): Promise<Uint8Array> {
    this.gets++;
    return super.get(key, options);
  }
}

const REGION = 64 * 1024;
const REGIONS = 1000;
const PAGE = 256;

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-s3-chain-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function makeChain(points: number, fanout: number, seed: number, maxChanges = 700) {
  const store = new CountingLists(new FsStore(dir));
  const repo = await Repository.init(store, newConfig({ volumeSize: REGIONS * REGION - 1000, regionSize: REGION, spanFanout: fanout, pageRegions: PAGE }));
  repo.inlineEntries = 300; // spans go to page packs too
  const random = seededRandom(seed);
  const model: Array<Map<number, ModelEntry>> = [new Map()];
  const index = await repo.index();
  let time = 1_000_000;
  for (let seq = 1; seq <= points; seq++) {
    const state = new Map(model.at(-1)!);
    const builder = new RunBuilder(store, seq, repo.context, { inlineEntries: 300 });
    const changes = Math.floor(random() * maxChanges) + 1;
    const pack = packKey(seq, 'abcdef01');
    // Ascending for the most part, with a second pass like a scan's host changes after its copy.
    const regions = [...new Set(Array.from({ length: changes }, () => Math.floor(random() * REGIONS)))];
    const firstPass = regions.filter((_, i) => i % 5 !== 0).sort((a, b) => a - b);
    const secondPass = regions.filter((_, i) => i % 5 === 0).sort((a, b) => a - b);
    for (const pass of [firstPass, secondPass]) {
      for (const region of pass) {
        const zero = random() < 0.1;
        const digest = new Uint8Array(32).map(() => Math.floor(random() * 256));
        // Some regions are a base (or zeros) with patches, as block-level writes store them.
        const patches = random() < 0.3 ? Array.from({ length: 1 + Math.floor(random() * 3) }, (_, j) => ({ pack, offset: 16 + j * 100 + Math.floor(random() * 1e6), length: 33 + Math.floor(random() * 9000) })) : [];
        const base = random() < 0.2 && patches.length > 0 ? undefined : { pack, offset: 16 + Math.floor(random() * 1e6), length: 1 + Math.floor(random() * 70000) };
        const location = zero ? undefined : { base, patches };
        await builder.set(region, location, zero ? new Uint8Array(32) : digest);
        state.set(region, { location, digest: zero ? new Uint8Array(32) : digest });
        if (pass === firstPass) await builder.closeBelow(region);
      }
    }
    const pages = await builder.finish();
    time += 1000;
    await repo.commitDelta({ seq, info: { kind: seq === 1 ? 'base' : 'host', start: time - 500, end: time, storedBytes: seq, source: undefined }, pages }, index);
    model.push(state);
  }
  return { store, repo, model };
}

async function expectPoint(repo: Repository, model: Array<Map<number, ModelEntry>>, seq: number): Promise<void> {
  const view = await repo.view(await repo.index(), seq);
  expect(view.time).toBe(seq === 0 ? 0 : 1_000_000 + 1000 * seq);
  const expected = model[seq]!;
  for await (const page of view.pages()) {
    for (let region = page.first; region < page.first + page.count; region++) {
      const entry = expected.get(region);
      const location = page.stored(region);
      if (entry === undefined || entry.location === undefined) {
        expect(location, `point ${seq} region ${region}`).toBeUndefined();
        expect(Buffer.from(page.digest(region)).equals(Buffer.alloc(32))).toBe(true);
      } else {
        expect(location, `point ${seq} region ${region}`).toEqual(entry.location);
        expect(Buffer.from(page.digest(region)).equals(entry.digest), `point ${seq} region ${region} digest`).toBe(true);
      }
    }
  }
}

describe('paged runs and spans', () => {
  it('every point of a chain with spans over three levels folds to the model, inline and paged runs alike', async () => {
    const { store, repo, model } = await makeChain(30, 3, 7);
    const keys: string[] = [];
    for await (const info of store.list('')) keys.push(info.key);
    expect(keys).toContain(spanKey(1, 3));
    expect(keys).toContain(spanKey(2, 9));
    expect(keys).toContain(spanKey(3, 27));
    expect(keys.some((k) => k.startsWith('pages/'))).toBe(true); // some runs were too large to be inline
    for (let seq = 0; seq <= 30; seq++) await expectPoint(repo, model, seq);
    const summary = await repo.summary(await repo.index(), 14);
    expect(summary).toMatchObject({ seq: 14, kind: 'host', end: 1_014_000, storedBytes: 14 });
  });

  it('finds the newest point with a few listings, however long the chain', async () => {
    const { store } = await makeChain(200, 3, 11, 20);
    const repo = await Repository.open(store);
    store.lists = 0;
    const index = await repo.index();
    expect(index.latest).toBe(200);
    const cover = await index.cover(200);
    // 200 = 2·81 + 1·27 + 1·9 + 0·3 + 2·1: six runs.
    expect(cover.map((b) => `${b.level}/${b.last}`)).toEqual(['4/81', '4/162', '3/189', '2/198', '0/199', '0/200']);
    expect(store.lists).toBeLessThanOrEqual(12); // a probe per level, then one listing per level, one of deltas, one of forgets/ and one of compactions/
  });

  it('a missing or damaged span is replaced by its children; a missing delta breaks only what no span covers', async () => {
    const { store, repo, model } = await makeChain(12, 3, 3);
    await unlink(join(dir, spanKey(2, 9)));
    await expectPoint(repo, model, 12);
    // A damaged page of a span: read falls back to the children.
    const spanFile = join(dir, spanKey(1, 12));
    const bytes = await readFile(spanFile);
    bytes[bytes.length - 40]! ^= 0xff;
    await writeFile(spanFile, bytes);
    await expectPoint(repo, model, 12);
    // Delta 4 lost: points 4 and 5 need it, 6 has span 1/6 standing in, and 1–3 do not need it.
    await unlink(join(dir, deltaKey(4)));
    await expectPoint(repo, model, 3);
    await expect(repo.view(await repo.index(), 5)).rejects.toBeInstanceOf(ChainGapError);
    await expectPoint(repo, model, 6);
    await expectPoint(repo, model, 12);
    void store;
  });
});
