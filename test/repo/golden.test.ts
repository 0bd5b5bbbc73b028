// The golden fixtures: a small format-4 repository stored as bytes (src/dev/golden-fixture.ts
// made it), two of its points forgotten and compacted. Today's code must read it (every point restores to the image it was taken of) and,
// decoding each object and encoding it again, write the very same bytes: an encoder change that
// would make other readers see something else cannot pass unnoticed.

import { createHash } from 'node:crypto';
import { cp, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { log } from '../../src/core/log.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { verify } from '../../src/core/verify.js';
import { GOLDEN_FORGOTTEN, goldenImage } from '../../src/dev/golden-fixture.js';
import { parseRunKey } from '../../src/repo/keys.js';
import { configObjectLock, decodeConfig, encodeConfig } from '../../src/repo/config.js';
import { sealEnvelope } from '../../src/repo/envelope.js';
import { decodeCompactionRecord, decodeForgetRecord, decodePruneRecord, decodeRetentionRecord, encodeCompactionRecord, encodeForgetRecord, encodePruneRecord, encodeRetentionRecord } from '../../src/repo/records.js';
import { PAGE_PACK_HEADER_BYTES, decodeDeltaRoot, decodePage, decodeSpanRoot, encodeDeltaRoot, encodePage, encodeSpanRoot, pagePackHeader } from '../../src/repo/run-codec.js';
import { EXIT } from '../../src/cli/exit-codes.js';
import { FsStore } from '../../src/store/fs.js';
import { runEntries } from '../../src/model/pages.js';
import { cli } from '../helpers/cli.js';
import { withVersion } from '../helpers/raw-objects.js';

const FIXTURE = join(import.meta.dirname, '..', 'fixtures', 'format6');
let dir: string;
let repoDir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-s3-golden-'));
  repoDir = join(dir, 'repo');
  await cp(join(FIXTURE, 'repo'), repoDir, { recursive: true }); // readers may write records: work on a copy
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

const raw = (key: string): Promise<Buffer> => readFile(join(FIXTURE, 'repo', key));
const keys = async (prefix: string): Promise<string[]> => (await readdir(join(FIXTURE, 'repo', prefix), { recursive: true, withFileTypes: true }))
  .filter((e) => e.isFile())
  .map((e) => join(prefix, e.parentPath.slice(join(FIXTURE, 'repo', prefix).length), e.name).replace(/^\/+/, ''))
  .sort();

describe('golden fixtures (format 5)', () => {
  it('every kept point restores to the image it was taken of (the compacted runs chosen), forgotten ones are refused, and log and verify read the chain', async () => {
    const expected = JSON.parse(await readFile(join(FIXTURE, 'expected.json'), 'utf8')) as Array<{ seq: number; kind: string; time: string; sha256: string }>;
    const forgotten = (seq: number): boolean => GOLDEN_FORGOTTEN.some(([a, b]) => a <= seq && seq <= b);
    const store = new FsStore(repoDir);
    for (const point of expected) {
      expect(createHash('sha256').update(goldenImage(point.seq)).digest('hex')).toBe(point.sha256);
      if (forgotten(point.seq)) {
        await expect(planRestore({ store, at: parsePointSelector(String(point.seq)) })).rejects.toThrow(/was removed by cdp-s3 forget/);
        continue;
      }
      const plan = await planRestore({ store, at: parsePointSelector(String(point.seq)) });
      expect(plan).toMatchObject({ seq: point.seq, kind: point.kind, time: point.time });
      const target = join(dir, `point-${point.seq}.img`);
      await executeRestore(plan, { to: target, workers: 1 });
      expect(createHash('sha256').update(await readFile(target)).digest('hex'), `point ${point.seq}`).toBe(point.sha256);
    }
    const kept = expected.filter((p) => !forgotten(p.seq));
    expect((await log({ store })).entries.map((e) => [e.seq, e.kind, e.time, e.spans])).toEqual(
      kept.map((p) => [p.seq, p.kind, p.time, p.seq === 6 ? [1] : []]),
    );
    const verified = await verify({ store, readData: true, workers: 1, dryRun: true });
    expect(verified.problems).toEqual([]);
    expect(verified).toMatchObject({ deltas: 4, spans: 4 });
    // Every stored piece was read once: the regions stored whole and the three patches.
    expect(verified.locationsRead).toBe(verified.locations);
  });

  it('decoding each object and encoding it again gives the stored bytes', async () => {
    const configBytes = await raw('config');
    const config = decodeConfig(configBytes);
    expect(Buffer.from(encodeConfig(config)).equals(configBytes)).toBe(true);
    const regionCount = Math.ceil(config.volumeSize / config.regionSize);
    const context = { volumeId: config.volumeId, pageRegions: config.pageRegions, regionCount, pageTotal: Math.ceil(regionCount / config.pageRegions) };
    let paged = 0;
    const intervals: Record<string, [number, number]> = {};
    for (const key of await keys('deltas')) {
      const seq = parseRunKey(key, 'deltas/')!.last;
      const bytes = await raw(key);
      const root = decodeDeltaRoot(bytes, seq, context);
      intervals[key] = [root.from, root.to];
      expect(Buffer.from(encodeDeltaRoot(seq, root.delta!, root.pages, config.volumeId, { from: root.from, to: root.to })).equals(bytes), key).toBe(true);
      paged += root.pages.filter((p) => p.ref !== undefined).length;
    }
    for (const key of await keys('spans')) {
      const level = Number(key.split('/')[1]);
      const last = parseRunKey(key, `spans/${key.split('/')[1]}/`)!.last;
      const block = { level, first: last - config.spanFanout ** level + 1, last };
      const bytes = await raw(key);
      const root = decodeSpanRoot(bytes, block, context);
      intervals[key] = [root.from, root.to];
      const summaries = root.summaries !== undefined ? { inline: root.summaries } : { blobs: root.summaryBlobs };
      expect(Buffer.from(encodeSpanRoot({ ...block, from: root.from, to: root.to, end: root.end }, root.pages, summaries, config.volumeId)).equals(bytes), key).toBe(true);
      for (const ref of root.pages) {
        if (ref.ref === undefined) continue;
        paged++;
        const pack = await raw(ref.ref.pack);
        const blob = pack.subarray(ref.ref.offset, ref.ref.offset + ref.ref.length);
        expect(createHash('sha256').update(blob).digest().equals(Buffer.from(ref.ref.digest))).toBe(true);
        expect(Buffer.from(encodePage(decodePage(blob, ref.page, context, key), config.volumeId, config.pageRegions)).equals(blob), `${key} page ${ref.page}`).toBe(true);
      }
    }
    expect(paged).toBeGreaterThan(0); // the fixture has runs in page packs, not only inline ones
    // …and regions stored as patches, inline (point 5) and in page packs (point 6): on a stored
    // base, on zeros, two deep, and a composed region deduplicated.
    const store = new FsStore(join(FIXTURE, 'repo'));
    const { Repository } = await import('../../src/repo/repository.js');
    const repo = await Repository.open(store);
    const stored = async (seq: number): Promise<Map<number, string>> => {
      const run = await repo.readRun({ level: 0, first: seq, last: seq });
      const out = new Map<number, string>();
      for (const ref of run.pages) for (const e of runEntries((await run.page(ref.page))!)) out.set(e.region, e.stored === undefined ? 'zeros' : `${e.stored.base === undefined ? 'zeros' : 'base'}+${e.stored.patches.length}`);
      return out;
    };
    expect([...(await stored(5))]).toEqual([[0, 'base+1'], [10, 'zeros+1'], [257, 'base+1']]);
    expect([...(await stored(6))]).toEqual([[0, 'base+2'], [11, 'zeros+1']]);
    // The compaction (points 2 and 4 forgotten): kept deltas 3 and 5 take in the point before
    // them, spans stop at their last kept point; the older versions are still stored.
    expect(intervals).toEqual({
      'deltas/0000000000000001': [0, 1],
      'deltas/0000000000000002': [1, 2],
      'deltas/0000000000000003': [2, 3],
      'deltas/0000000000000003.00000001': [1, 3],
      'deltas/0000000000000004': [3, 4],
      'deltas/0000000000000005': [4, 5],
      'deltas/0000000000000005.00000001': [3, 5],
      'deltas/0000000000000006': [5, 6],
      'spans/01/0000000000000002': [0, 2],
      'spans/01/0000000000000002.00000001': [0, 1],
      'spans/01/0000000000000004': [2, 4],
      'spans/01/0000000000000004.00000001': [1, 3],
      'spans/01/0000000000000006': [4, 6],
      'spans/01/0000000000000006.00000001': [3, 6],
      'spans/02/0000000000000004': [0, 4],
      'spans/02/0000000000000004.00000001': [0, 3],
    });
    const record = decodeCompactionRecord(await raw('compactions/00000001'), 'compactions/00000001', 1);
    expect(record).toMatchObject({ generation: 1, latest: 6, ranges: GOLDEN_FORGOTTEN });
    const compacted = decodeSpanRoot(await raw('spans/01/0000000000000002.00000001'), { level: 1, first: 1, last: 2 }, context);
    expect(compacted.summaries!.map((p) => p.kind)).toEqual(['base', 'removed']);
    for (const key of await keys('pages')) expect((await raw(key)).subarray(0, PAGE_PACK_HEADER_BYTES).equals(pagePackHeader())).toBe(true);
    // Span 02/4 shares page 1 with span 01/2 (only that child changed it).
    const two = decodeSpanRoot(await raw('spans/02/0000000000000004'), { level: 2, first: 1, last: 4 }, context);
    const one = decodeSpanRoot(await raw('spans/01/0000000000000002'), { level: 1, first: 1, last: 2 }, context);
    expect(two.pages.find((p) => p.page === 1)!.ref).toEqual(one.pages.find((p) => p.page === 1)!.ref);
  });

  it('a repository of format 1 to 5 (cdp-s3 0.1 to 0.5) is refused by name, and so is a newer one: exit 7, nothing written', async () => {
    for (const [version, says] of [
      [1, /^cdp-s3: config: format version 1 is not supported \(this cdp-s3 reads version 6\): the repository was made by an older cdp-s3 and is not migrated; restore what you need with the cdp-s3 that wrote it \(cdp-s3 0\.1\.x\)/],
      [2, /^cdp-s3: config: format version 2 is not supported \(this cdp-s3 reads version 6\): the repository was made by an older cdp-s3 and is not migrated; restore what you need with the cdp-s3 that wrote it \(cdp-s3 0\.2\.x\)/],
      [3, /^cdp-s3: config: format version 3 is not supported \(this cdp-s3 reads version 6\): the repository was made by an older cdp-s3 and is not migrated; restore what you need with the cdp-s3 that wrote it \(cdp-s3 0\.3\.x/],
      [4, /^cdp-s3: config: format version 4 is not supported \(this cdp-s3 reads version 6\): the repository was made by an older cdp-s3 and is not migrated; restore what you need with the cdp-s3 that wrote it \(cdp-s3 0\.4\.x/],
      [5, /^cdp-s3: config: format version 5 is not supported \(this cdp-s3 reads version 6\): the repository was made by an older cdp-s3 and is not migrated; restore what you need with the cdp-s3 that wrote it \(cdp-s3 0\.5\.x/],
      [7, /^cdp-s3: config: format version 7 is not supported \(this cdp-s3 reads version 6\): the repository was made by a newer cdp-s3; upgrade cdp-s3$/m],
    ] as const) {
      const other = join(dir, `v${version}`);
      await cp(repoDir, other, { recursive: true });
      await writeFile(join(other, 'config'), withVersion(await readFile(join(other, 'config')), version));
      for (const args of [['log'], ['restore', '--at', 'latest', '--to', join(dir, 'never.img')], ['backup', join(dir, 'point-1.img')]]) {
        const result = await cli('--repo', other, ...args);
        expect(result.code, args.join(' ')).toBe(EXIT.integrity);
        expect(result.stderr).toMatch(says);
      }
      await expect(readFile(join(dir, 'never.img'))).rejects.toThrow();
    }
  });

  it('forget and prune records (records/): decoding and encoding again gives the stored bytes', async () => {
    const dir = join(import.meta.dirname, '..', 'fixtures', 'format6', 'records');
    const forgetBytes = await readFile(join(dir, 'forget.bin'));
    const forgetRecord = decodeForgetRecord(forgetBytes, 'forgets/x');
    expect(forgetRecord).toEqual({
      volumeId: '6f1c1a52-0d0e-4f3b-9c55-2b8f3a7d9e10',
      created: 1796630400000,
      latest: 20000,
      ranges: [[1, 4095], [4097, 8191], [19990, 19990]],
    });
    expect(Buffer.from(encodeForgetRecord(forgetRecord)).equals(forgetBytes)).toBe(true);
    const pruneBytes = await readFile(join(dir, 'prune.bin'));
    const pruneRecord = decodePruneRecord(pruneBytes, 'prunes/x');
    expect(pruneRecord.candidates).toEqual([
      { key: 'packs/0000000000000007-0badc0de', since: 1796544000000 },
      { key: 'deltas/0000000000004096', since: 1796630400000 },
    ]);
    expect(Buffer.from(encodePruneRecord(pruneRecord)).equals(pruneBytes)).toBe(true);
    const compactionBytes = await readFile(join(dir, 'compaction.bin'));
    const compactionRecord = decodeCompactionRecord(compactionBytes, 'compactions/00000003', 3);
    expect(compactionRecord).toEqual({ ...forgetRecord, generation: 3 });
    expect(Buffer.from(encodeCompactionRecord(compactionRecord)).equals(compactionBytes)).toBe(true);
    expect(() => decodeCompactionRecord(compactionBytes, 'compactions/00000002', 2)).toThrow(/is generation 3; its key says 2/);
    // Object Lock: a config with objectLock, and a retention record.
    const lockedBytes = await readFile(join(dir, 'config-object-lock.bin'));
    const locked = decodeConfig(lockedBytes);
    expect(locked.objectLock).toEqual({ mode: 'compliance', days: 30 });
    expect(configObjectLock(lockedBytes)).toEqual({ mode: 'compliance', days: 30 });
    expect(Buffer.from(encodeConfig(locked)).equals(lockedBytes)).toBe(true);
    const retentionBytes = await readFile(join(dir, 'retention.bin'));
    const retention = decodeRetentionRecord(retentionBytes);
    expect(retention).toEqual({ volumeId: '6f1c1a52-0d0e-4f3b-9c55-2b8f3a7d9e10', at: 1796630400000, until: 1799222400000, extended: 70123 });
    expect(Buffer.from(encodeRetentionRecord(retention)).equals(retentionBytes)).toBe(true);
    // A forget record whose ranges overlap, or reach the newest point, is refused.
    expect(() => decodeForgetRecord(encodeForgetRecord({ ...forgetRecord, ranges: [[1, 10], [5, 20]] }), 'forgets/y')).toThrow(/not ascending, disjoint/);
    expect(() => decodeForgetRecord(encodeForgetRecord({ ...forgetRecord, ranges: [[1, 20000]] }), 'forgets/y')).toThrow(/before the newest point 20000/);
  });

  it('integers are msgpack integers: int64 from 2^32 on (times, large sizes), never float64', () => {
    const body = (bytes: Uint8Array): Buffer => Buffer.from(bytes.subarray(10, bytes.length - 32));
    expect(body(sealEnvelope({ magic: 'CDPS3TST', version: 3, what: 'test' }, { t: 2 ** 40 })).toString('hex')).toBe('81a174d30000010000000000');
    expect(body(sealEnvelope({ magic: 'CDPS3TST', version: 3, what: 'test' }, { t: 2 ** 32 - 1 })).toString('hex')).toBe('81a174ceffffffff');
    expect(body(sealEnvelope({ magic: 'CDPS3TST', version: 3, what: 'test' }, { t: 300 })).toString('hex')).toBe('81a174cd012c');
  });
});
