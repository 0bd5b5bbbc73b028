// serve: a point in time as a read-only NBD export, against the local store and s3rver.
// PitExport is tested through the NbdExport interface (reads at arbitrary offsets, what costs a
// GET and what does not, read-ahead, damage, writes refused).

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { parsePointSelector } from '../../src/core/points.js';
import { type PitExport, type PitExportOptions, type ServeHandle, openPitExport, serve } from '../../src/core/serve.js';
import * as P from '../../src/nbd/protocol.js';
import { NbdRequestError } from '../../src/nbd/types.js';
import { loadMap } from '../helpers/pit.js';
import { Repository } from '../../src/repo/repository.js';
import { putMarks } from '../../src/repo/trust.js';
import { openStore } from '../../src/store/open.js';
import { FaultStore } from '../helpers/fault-store.js';
import { makeImage, mutateImage } from '../helpers/images.js';
import { FsRawObjects, type RawObjects, S3RawObjects } from '../helpers/raw-objects.js';
import { seededRandom } from '../../src/demo/sample-image.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { cli } from '../helpers/cli.js';
import { RawClient, runTool } from '../nbd/helpers.js';
import { missingBinaries, requireOrSkip, skipOutsideCi, skipTitle } from '../helpers/requirements.js';
import { turns, waitUntil } from '../helpers/wait.js';

const REGION = 64 * 1024;
const SIZE = 40 * REGION + 12345; // a short last region
const BUCKET = 'serve';
const fixture = useS3Fixture('serve', [BUCKET]);

interface Repo {
  url: string;
  rounds: Array<{ seq: number; time: string; image: Buffer }>;
  raw: RawObjects;
}

/** Backs up three rounds of an image with zero runs and repeated regions. */
async function makeRepo(kind: 'fs' | 's3', name: string): Promise<Repo> {
  const url = kind === 'fs' ? join(fixture.dir, name) : `s3://${BUCKET}/${name}`;
  const raw = kind === 'fs' ? new FsRawObjects(url) : new S3RawObjects(BUCKET, name, fixture.server.endpoint);
  if (raw instanceof S3RawObjects) fixture.onTeardown(() => raw.destroy());
  const image = makeImage({ size: SIZE, regionSize: REGION, seed: 5, zero: 0.25, repeated: 0.15 });
  // A run of zero regions for the zero-read tests.
  image.fill(0, 20 * REGION, 24 * REGION);
  const source = join(fixture.dir, `${name}.img`);
  await writeFile(source, image);
  const store = openStore(url);
  await init({ store, from: source, regionSize: REGION, spanFanout: 2 });
  const rounds: Repo['rounds'] = [];
  for (let round = 0; round < 3; round++) {
    if (round > 0) {
      mutateImage(image, 3, 40 + round);
      image.fill(0, 20 * REGION, 24 * REGION);
      await writeFile(source, image);
    }
    const result = await backup({ store, source });
    rounds.push({ seq: result.seq, time: result.time, image: Buffer.from(image) }); // backup makes each time later than the last
  }
  return { url, rounds, raw };
}

/** Makes the export's verifying threads fail as if a worker had crashed. */
function failThreads(pit: PitExport): void {
  (pit as unknown as { reader: { pool: { fail(error: Error): void } } }).reader.pool.fail(new Error('worker crashed'));
}

/** Ranged GETs (pack bytes) a FaultStore saw since `from`. */
const rangedGets = (store: FaultStore, from = 0): number => store.gets.slice(from).filter((g) => g.ranged).length;

/** Waits until the export's GETs, read-ahead included, have landed. */
const fetchesLanded = (pit: PitExport): Promise<void> => waitUntil(() => !pit.fetching, 'the GETs to land');

describe('PitExport read-ahead on a sparse volume', () => {
  it('prefetches small islands of data between zeros instead of leaving each to a miss', async () => {
    const regions = 100;
    const islands = [0, 1, 30, 50, 51, 70, 90];
    const image = Buffer.alloc(regions * REGION);
    for (const r of islands) image.fill(r + 1, r * REGION, (r + 1) * REGION);
    const source = join(fixture.dir, 'islands.img');
    await writeFile(source, image);
    const url = join(fixture.dir, 'islands-repo');
    await init({ store: openStore(url), from: source, regionSize: REGION });
    await backup({ store: openStore(url), source });
    const pit = await openPitExport({
      at: parsePointSelector('latest'),
      store: openStore(url),
      workers: 1,
      readAheadBytes: 16 * REGION,
      prefetchUnitBytes: 8 * REGION,
      fetchUnitBytes: REGION,
    });
    try {
      const chunk = 32 * 1024;
      for (let offset = 0; offset < regions * REGION; offset += chunk) {
        expect(Buffer.from(await pit.read(offset, chunk)).equals(image.subarray(offset, offset + chunk))).toBe(true);
        await fetchesLanded(pit); // a reader slower than the store
      }
      // Only the first read misses; every later island was fetched ahead (a tail that could not
      // grow used to wait for the reader, so each island missed).
      expect(pit.stats.cacheMisses).toBeLessThanOrEqual(1);
      expect(pit.stats.prefetched).toBeGreaterThanOrEqual(islands.length - 2);
    } finally {
      await pit.close();
    }
  });
});

for (const kind of ['fs', 's3'] as const) {
  describe(`PitExport (${kind} store)`, () => {
    let repo: Repo;
    const opened: PitExport[] = [];
    beforeAll(async () => {
      repo = await makeRepo(kind, `pit-${kind}`);
    });
    afterAll(async () => {
      for (const e of opened) await e.close();
    });

    async function open(options: Partial<PitExportOptions> = {}): Promise<{ pit: PitExport; store: FaultStore }> {
      const store = new FaultStore(openStore(repo.url));
      const pit = await openPitExport({ at: parsePointSelector('latest'), workers: 1, ...options, store });
      opened.push(pit);
      return { pit, store };
    }

    it('describes the point in time and reads every round bit-exact at arbitrary offsets and lengths', async () => {
      for (const round of repo.rounds) {
        for (const at of [String(round.seq), round.time]) {
          const { pit } = await open({ at: parsePointSelector(at), name: 'disk0' });
          expect(pit.seq).toBe(round.seq);
          expect(pit.time).toBe(round.time);
          expect(pit.name).toBe('disk0');
          expect(pit.readOnly).toBe(true);
          expect(pit.size).toBe(SIZE);
          const rand = seededRandom(round.seq * 7 + at.length);
          for (let i = 0; i < 60; i++) {
            const length = i % 10 === 0 ? 1 + Math.floor(rand() * 5 * REGION) : 1 + Math.floor(rand() * 3000);
            const offset = i % 7 === 0 ? Math.floor(rand() * 40) * REGION - (i % 2) : Math.floor(rand() * (SIZE - length));
            const from = Math.max(0, Math.min(offset, SIZE - length));
            const bytes = await pit.read(from, length);
            expect(bytes.length).toBe(length);
            expect(Buffer.from(bytes).equals(round.image.subarray(from, from + length)), `seq ${round.seq} at ${from}+${length}`).toBe(true);
          }
          // The whole volume in one read, the short last region in another, and nothing at all.
          expect(Buffer.from(await pit.read(0, SIZE)).equals(round.image)).toBe(true);
          expect(Buffer.from(await pit.read(SIZE - 100, 100)).equals(round.image.subarray(SIZE - 100))).toBe(true);
          expect((await pit.read(5, 0)).length).toBe(0);
        }
      }
    });

    it('reads zero regions as zeros without any GET', async () => {
      const { pit, store } = await open({ readAheadBytes: 0 });
      const bytes = await pit.read(20 * REGION + 17, 4 * REGION - 17);
      expect(bytes.every((b) => b === 0)).toBe(true);
      expect(rangedGets(store)).toBe(0);
      // Sequential zero reads start no read-ahead GETs into zeros either.
      await pit.read(20 * REGION, REGION);
      await pit.read(21 * REGION, REGION);
      expect(rangedGets(store)).toBe(0);
    });

    it('serves repeated reads from the cache, and without a cache fetches again', async () => {
      const { pit, store } = await open({ readAheadBytes: 0 });
      const first = await pit.read(3 * REGION + 100, 1000);
      expect(rangedGets(store)).toBe(1);
      for (let i = 0; i < 5; i++) expect(Buffer.from(await pit.read(3 * REGION + 100, 1000)).equals(Buffer.from(first))).toBe(true);
      await pit.read(3 * REGION, REGION);
      expect(rangedGets(store)).toBe(1);
      expect(pit.stats.cacheHits).toBe(6);
      expect(pit.stats.cachedBytes).toBe(REGION);

      const uncached = await open({ readAheadBytes: 0, cacheBytes: 0 });
      await uncached.pit.read(3 * REGION, 10);
      await uncached.pit.read(3 * REGION, 10);
      expect(rangedGets(uncached.store)).toBe(2);
      expect(uncached.pit.stats.cachedBytes).toBe(0);
    });

    it('evicts the least recently used regions beyond cacheBytes', async () => {
      const { pit, store } = await open({ readAheadBytes: 0, cacheBytes: 2 * REGION });
      const pitRepo = await Repository.open(openStore(repo.url));
      const map = await loadMap(pitRepo, repo.rounds.at(-1)!.seq);
      const data = [...Array(20).keys()].filter((r) => !map.isZero(r));
      const [a, b, c] = [data[0]!, data[2]!, data[4]!];
      await pit.read(a * REGION, 10);
      await pit.read(b * REGION, 10);
      await pit.read(a * REGION, 10); // a is now the most recent
      await pit.read(c * REGION, 10); // evicts b
      const before = rangedGets(store);
      await pit.read(a * REGION, 10);
      await pit.read(c * REGION, 10);
      expect(rangedGets(store)).toBe(before);
      await pit.read(b * REGION, 10);
      expect(rangedGets(store)).toBe(before + 1);
      expect(pit.stats.cachedBytes).toBeLessThanOrEqual(2 * REGION);
    });

    it('recycles fetch buffers the cache let go of, and concurrent reads under eviction churn stay bit-exact', async () => {
      // A cache of four regions, GETs of up to two (so one buffer backs two cache entries) and a
      // read-ahead window of two, read by eight readers at once, three passes: buffers are
      // evicted and reused all the time while reads are in flight.
      const { pit } = await open({ cacheBytes: 4 * REGION, readAheadBytes: 2 * REGION, prefetchConcurrency: 2, fetchUnitBytes: 2 * REGION, prefetchUnitBytes: 2 * REGION });
      const image = repo.rounds.at(-1)!.image;
      const rand = seededRandom(99);
      for (let pass = 0; pass < 3; pass++) {
        const reads: Array<Promise<void>> = [];
        for (let reader = 0; reader < 8; reader++) {
          reads.push(
            (async () => {
              for (let i = 0; i < 12; i++) {
                const length = 1 + Math.floor(rand() * 2 * REGION);
                const offset = Math.floor(rand() * (SIZE - length));
                if (reader % 2 === 0) {
                  const target = Buffer.alloc(length, 0xee);
                  await pit.readInto!(offset, target);
                  expect(target.equals(image.subarray(offset, offset + length)), `${offset}+${length}`).toBe(true);
                } else {
                  // Views are held a while, as a slow socket would, while the churn goes on.
                  const { views, release } = await pit.readViews!(offset, length);
                  await turns(Math.floor(rand() * 4));
                  expect(Buffer.concat(views).equals(image.subarray(offset, offset + length)), `views ${offset}+${length}`).toBe(true);
                  release();
                }
              }
            })(),
          );
        }
        await Promise.all(reads);
      }
      expect(pit.stats.fetchBuffersReused).toBeGreaterThan(0);
      expect(pit.stats.cachedBytes).toBeLessThanOrEqual(4 * REGION);
    });

    it('shares one GET among concurrent reads of one region', async () => {
      const { pit, store } = await open({ readAheadBytes: 0 });
      const region = 5;
      const reads = await Promise.all(Array.from({ length: 8 }, (_, i) => pit.read(region * REGION + i * 1000, 5000)));
      expect(rangedGets(store)).toBe(1);
      const image = repo.rounds.at(-1)!.image;
      reads.forEach((bytes, i) => expect(Buffer.from(bytes).equals(image.subarray(region * REGION + i * 1000, region * REGION + i * 1000 + 5000))).toBe(true));
    });

    it('prefetches ahead of sequential reads, and not for random ones', async () => {
      const image = repo.rounds.at(-1)!.image;
      const { pit, store } = await open({ readAheadBytes: 4 * REGION, fetchUnitBytes: REGION, prefetchConcurrency: 2 });
      // Two reads that do not follow each other: no read-ahead.
      await pit.read(30 * REGION, 4096);
      await pit.read(2 * REGION, 4096);
      await fetchesLanded(pit);
      expect(pit.stats.prefetched).toBe(0);
      // A read that starts where the last one ended: the next regions come in the background.
      await pit.read(2 * REGION + 4096, 4096);
      await waitUntil(() => pit.stats.prefetched > 0 && rangedGets(store) >= 1, 'read-ahead');
      // Keep reading sequentially: the following regions are there before they are asked for.
      let offset = 2 * REGION + 8192;
      const chunk = 16 * 1024;
      while (offset < 12 * REGION) {
        const bytes = await pit.read(offset, chunk);
        expect(Buffer.from(bytes).equals(image.subarray(offset, offset + chunk))).toBe(true);
        offset += chunk;
        await fetchesLanded(pit);
      }
      expect(pit.stats.prefetched).toBeGreaterThanOrEqual(5);
      // Nearly every region after the first was fetched ahead of the reads (misses: the first two and at most one race).
      expect(pit.stats.cacheMisses).toBeLessThanOrEqual(4);
    });

    it('reads ahead in whole GETs, not a region per read as the window moves', async () => {
      const image = repo.rounds.at(-1)!.image;
      const { pit, store } = await open({ readAheadBytes: 8 * REGION, prefetchUnitBytes: 4 * REGION, fetchUnitBytes: REGION });
      const chunk = 16 * 1024;
      for (let offset = 0; offset < 32 * REGION; offset += chunk) {
        const bytes = await pit.read(offset, chunk);
        expect(Buffer.from(bytes).equals(image.subarray(offset, offset + chunk))).toBe(true);
        await fetchesLanded(pit);
      }
      // 32 regions, of which 22 are stored (a quarter are zeros, and repeats break the runs in
      // the packs), in GETs of up to 4: 11 here. Extending the window a region per read took 20.
      expect(pit.stats.cacheMisses).toBeLessThanOrEqual(1);
      expect(rangedGets(store)).toBeLessThanOrEqual(13);
    });

    it('merges neighbouring regions of a pack into one ranged GET', async () => {
      const pitRepo = await Repository.open(openStore(repo.url));
      const map = await loadMap(pitRepo, repo.rounds[0]!.seq);
      // The longest run (up to 4) of neighbouring regions stored back to back in one pack.
      const follows = (r: number): boolean => {
        const a = map.location(r);
        const b = map.location(r + 1);
        return a !== undefined && b !== undefined && a.pack === b.pack && b.offset === a.offset + a.length;
      };
      let start = 0;
      let run = 1;
      for (let r = 0; r < 39; r++) {
        let n = 1;
        while (n < 4 && r + n < 40 && follows(r + n - 1)) n++;
        if (n > run) [start, run] = [r, n];
      }
      expect(run).toBeGreaterThanOrEqual(2);
      const { pit, store } = await open({ at: parsePointSelector('1'), readAheadBytes: 0, fetchUnitBytes: 8 * REGION });
      const bytes = await pit.read(start * REGION, run * REGION);
      expect(Buffer.from(bytes).equals(repo.rounds[0]!.image.subarray(start * REGION, (start + run) * REGION))).toBe(true);
      expect(rangedGets(store)).toBe(1);
      // With one-region GETs, the same read costs one a region.
      const small = await open({ at: parsePointSelector('1'), readAheadBytes: 0, fetchUnitBytes: REGION });
      await small.pit.read(start * REGION, run * REGION);
      expect(rangedGets(small.store)).toBe(run);
    });

    it('refuses writes, trims and zeroing with EPERM; flush succeeds', async () => {
      const { pit, store } = await open();
      const putsBefore = store.puts.length;
      const attempts: Array<() => Promise<void>> = [() => pit.write(0, new Uint8Array(512), false), () => pit.trim(0, 4096, false), () => pit.writeZeroes(0, 4096, true)];
      for (const attempt of attempts) {
        const error = await attempt().catch((e: unknown) => e);
        expect(error).toBeInstanceOf(NbdRequestError);
        expect((error as NbdRequestError).errno).toBe('EPERM');
      }
      await expect(pit.flush()).resolves.toBeUndefined();
      expect(store.puts.length).toBe(putsBefore);
    });

    it('answers EIO (and logs) for a region whose stored bytes are corrupt, and serves the rest', async () => {
      const seq = repo.rounds.at(-1)!.seq;
      const image = repo.rounds.at(-1)!.image;
      const map = await loadMap(await Repository.open(openStore(repo.url)), seq);
      const region = [...Array(40).keys()].find((r) => !map.isZero(r) && r !== 0)!;
      const location = map.location(region)!;
      const original = await repo.raw.get(location.pack);
      const damaged = Buffer.from(original);
      damaged[location.offset + 777]! ^= 0x01;
      await repo.raw.put(location.pack, damaged);
      try {
        const lines: string[] = [];
        const { pit } = await open({ readAheadBytes: 0, log: (line) => lines.push(line) });
        const error = await pit.read(region * REGION + 700, 200).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(NbdRequestError);
        expect((error as NbdRequestError).errno).toBe('EIO');
        expect(lines.length).toBe(1);
        expect(lines[0]).toMatch(new RegExp(`point in time ${seq}.*region ${region} .*digest mismatch`));
        expect(pit.stats.integrityErrors).toBe(1);
        // Bad bytes are not cached: asking again fetches (and fails) again.
        await expect(pit.read(region * REGION, 10)).rejects.toMatchObject({ errno: 'EIO' });
        expect(lines.length).toBe(2);
        // Verified on the main thread, the damage is found just the same.
        const fallback = await open({ readAheadBytes: 0 });
        failThreads(fallback.pit);
        await expect(fallback.pit.read(region * REGION, 10)).rejects.toMatchObject({ errno: 'EIO' });
        expect(fallback.pit.stats.integrityErrors).toBe(1);
        // Regions stored elsewhere still read.
        const id = (r: number): string => `${map.location(r)!.pack}@${map.location(r)!.offset}`;
        const other = [...Array(40).keys()].find((r) => !map.isZero(r) && id(r) !== id(region))!;
        expect(Buffer.from(await pit.read(other * REGION, 100)).equals(image.subarray(other * REGION, other * REGION + 100))).toBe(true);
      } finally {
        await repo.raw.put(location.pack, original);
      }
    });

    it('keeps serving, verified on the main thread, if the verifying threads fail', async () => {
      const lines: string[] = [];
      const { pit } = await open({ readAheadBytes: 0, log: (line) => lines.push(line) });
      failThreads(pit);
      expect(Buffer.from(await pit.read(0, SIZE)).equals(repo.rounds.at(-1)!.image)).toBe(true);
      expect(lines).toEqual([expect.stringMatching(/verifying threads failed \(.*worker crashed\); verifying on the main thread/)]);
    });

    it('rejects reads after close with ESHUTDOWN', async () => {
      const { pit } = await open();
      await pit.read(0, 10);
      await pit.close();
      await expect(pit.read(0, 10)).rejects.toMatchObject({ errno: 'ESHUTDOWN' });
    });

    it('chooses the point in time as restore does (no repository, the future)', async () => {
      await expect(openPitExport({ store: openStore(join(fixture.dir, 'nothing-here')), at: parsePointSelector('latest') })).rejects.toMatchObject({
        code: 'REPO_NOT_INITIALIZED',
      });
      await expect(open({ at: parsePointSelector('99') })).rejects.toMatchObject({ code: 'NO_POINT_IN_TIME' });
    });

    it('passes over a suspect point in time unless allowSuspect, as restore does', async () => {
      const marked = await makeRepo(kind, `marks-${kind}`);
      const store = openStore(marked.url);
      await putMarks(store, { created: Date.now(), record: 'scans/test', marks: [{ seq: 3, kind: 'suspect', reason: 'test', regions: [1] }], damaged: [] }, 3);
      const careful = await openPitExport({ store, at: parsePointSelector('latest'), workers: 1 });
      opened.push(careful);
      expect({ seq: careful.seq, skipped: careful.skipped, untrusted: careful.untrusted }).toEqual({ seq: 2, skipped: [{ seq: 3, kinds: ['suspect'] }], untrusted: [] });
      expect(Buffer.from(await careful.read(0, SIZE)).equals(marked.rounds[1]!.image)).toBe(true);
      const anyway = await openPitExport({ store, at: parsePointSelector('latest'), allowSuspect: true, workers: 1 });
      opened.push(anyway);
      expect({ seq: anyway.seq, untrusted: anyway.untrusted }).toEqual({ seq: 3, untrusted: ['suspect'] });
      expect(Buffer.from(await anyway.read(0, SIZE)).equals(marked.rounds[2]!.image)).toBe(true);
    });
  });
}

// ---- end to end: the NBD server in front of a PitExport, read by real clients ----

const CLIENTS_MISSING = missingBinaries('qemu-img', 'qemu-io', 'nbdcopy');

for (const kind of ['fs', 's3'] as const) {
  describe.skipIf(skipOutsideCi(CLIENTS_MISSING))(skipTitle(`serve over NBD (${kind} store)`, CLIENTS_MISSING), () => {
    let repo: Repo;
    const handles: ServeHandle[] = [];
    beforeAll(async () => {
      repo = await makeRepo(kind, `nbd-${kind}`);
    });
    afterAll(async () => {
      for (const h of handles) await h.close();
    });

    async function start(at: string, names?: string[]): Promise<ServeHandle> {
      const handle = await serve({ store: openStore(repo.url), at: parsePointSelector(at), listen: { host: '127.0.0.1', port: 0 }, names });
      handles.push(handle);
      return handle;
    }

    it('serves each point in time identical to what restore writes (qemu-img compare, nbdcopy)', async () => {
      for (const round of repo.rounds) {
        const at = round.seq === 2 ? round.time : String(round.seq);
        const restored = join(fixture.dir, `nbd-${kind}-restored-${round.seq}.img`);
        const result = await cli('--repo', repo.url, 'restore', '--at', at, '--to', restored);
        expect(result.code, result.stderr).toBe(0);
        const handle = await start(at, ['', 'disk0']);
        expect(handle.seq).toBe(round.seq);
        expect(handle.time).toBe(round.time);
        expect(handle.names).toEqual(['', 'disk0']);
        const uri = `nbd://127.0.0.1:${handle.port}`;
        const compared = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', uri, restored]);
        expect(compared.code, compared.stdout + compared.stderr).toBe(0);
        expect(compared.stdout).toMatch(/Images are identical/);
        const copy = join(fixture.dir, `nbd-${kind}-copy-${round.seq}.img`);
        const copied = await runTool('nbdcopy', [`${uri}/disk0`, copy]);
        expect(copied.code, copied.stderr).toBe(0);
        const bytes = await readFile(copy);
        expect(bytes.equals(await readFile(restored))).toBe(true);
        expect(bytes.equals(round.image)).toBe(true);
        await handle.close();
      }
    });

    it('refuses writes: qemu-io cannot open it for writing, and a raw WRITE is answered EPERM', async () => {
      const handle = await start('latest');
      const uri = `nbd://127.0.0.1:${handle.port}`;
      const rw = await runTool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 4096', uri]);
      expect(rw.code).not.toBe(0);
      expect(rw.stderr + rw.stdout).toMatch(/Permission denied|read-only/i);
      const ro = await runTool('qemu-io', ['-r', '-f', 'raw', '-c', 'write -P 0x55 0 4096', uri]);
      expect(ro.stderr + ro.stdout).toMatch(/read-only|Permission denied|not permitted/i);

      const { client, flags } = await RawClient.open(handle.port);
      expect(flags & P.TFLAG_READ_ONLY).not.toBe(0);
      const write = await client.request(P.CMD_WRITE, 1, 0, 4096, 0, Buffer.alloc(4096, 0x55));
      expect(write.error).toBe(P.ERRNO.EPERM);
      const trim = await client.request(P.CMD_TRIM, 2, 0, 4096);
      expect(trim.error).toBe(P.ERRNO.EPERM);
      const zero = await client.request(P.CMD_WRITE_ZEROES, 3, 0, 4096);
      expect(zero.error).toBe(P.ERRNO.EPERM);
      const read = await client.request(P.CMD_READ, 4, 0, 4096);
      expect(read.error).toBe(0);
      expect(read.data!.equals(repo.rounds.at(-1)!.image.subarray(0, 4096))).toBe(true);
      client.disconnect();
      await client.closed;
      // The backend refuses them too, for clients that get past the server's check.
      await expect(handle.pit.write(0, new Uint8Array(1), false)).rejects.toMatchObject({ errno: 'EPERM' });
    });

    it('answers EIO for a corrupt region over NBD and keeps serving the rest', async () => {
      const seq = repo.rounds.at(-1)!.seq;
      const image = repo.rounds.at(-1)!.image;
      const map = await loadMap(await Repository.open(openStore(repo.url)), seq);
      const region = [...Array(40).keys()].find((r) => !map.isZero(r) && r > 1)!;
      const location = map.location(region)!;
      const original = await repo.raw.get(location.pack);
      const damaged = Buffer.from(original);
      damaged[location.offset + 100]! ^= 0x80;
      await repo.raw.put(location.pack, damaged);
      const lines: string[] = [];
      try {
        const handle = await serve({ store: openStore(repo.url), at: parsePointSelector(String(seq)), listen: { host: '127.0.0.1', port: 0 }, log: (l) => lines.push(l) });
        handles.push(handle);
        const { client } = await RawClient.open(handle.port);
        const bad = await client.request(P.CMD_READ, 1, region * REGION, 4096);
        expect(bad.error).toBe(P.ERRNO.EIO);
        const good = await client.request(P.CMD_READ, 2, 0, 4096);
        expect(good.error).toBe(0);
        expect(good.data!.equals(image.subarray(0, 4096))).toBe(true);
        client.disconnect();
        await client.closed;
        expect(lines.some((l) => l.includes(`region ${region} `) && l.includes('digest mismatch'))).toBe(true);
      } finally {
        await repo.raw.put(location.pack, original);
      }
    });

    it('stops on the signal after answering the reads in flight', async () => {
      const controller = new AbortController();
      const handle = await serve({ store: openStore(repo.url), at: parsePointSelector('latest'), listen: { host: '127.0.0.1', port: 0 }, signal: controller.signal });
      handles.push(handle);
      const { client } = await RawClient.open(handle.port);
      client.send(P.CMD_READ, 1, 0, 8 * REGION);
      // Once the read has reached the backend, stop: the server answers it before closing.
      await waitUntil(() => handle.pit.stats.cacheMisses > 0, 'the read to reach the backend');
      controller.abort();
      const reply = await client.reply();
      expect(reply.error).toBe(0);
      expect(reply.data!.equals(repo.rounds.at(-1)!.image.subarray(0, 8 * REGION))).toBe(true);
      await handle.closed;
      await client.closed;
      await expect(RawClient.connect(handle.port)).rejects.toThrow();
    });

    it('mounts a served ext4 file system read-only (nbdfuse, losetup -r, mount -o ro)', async (context) => {
      requireOrSkip(context, await mountUnsupported());
      const work = join(fixture.dir, `mount-${kind}`);
      const content = join(work, 'content');
      await mkdir(join(content, 'dir'), { recursive: true });
      const payload = makeImage({ size: 300_000, regionSize: 4096, seed: 9, zero: 0 });
      await writeFile(join(content, 'hello.txt'), `hello from point in time (${kind})\n`);
      await writeFile(join(content, 'dir', 'payload.bin'), payload);
      const fsImage = join(work, 'fs.img');
      await run('truncate', ['-s', '16M', fsImage]);
      await run('mkfs.ext4', ['-q', '-F', '-b', '4096', '-d', content, fsImage]);
      const url = kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/mount`;
      const store = openStore(url);
      await init({ store, from: fsImage, regionSize: REGION });
      await backup({ store, source: fsImage });
      const handle = await serve({ store, at: parsePointSelector('latest'), listen: { host: '127.0.0.1', port: 0 } });
      handles.push(handle);

      const fuseDir = join(work, 'fuse');
      const mnt = join(work, 'mnt');
      await mkdir(fuseDir);
      await mkdir(mnt);
      let nbdfuse: ChildProcess | undefined;
      let loop: string | undefined;
      let mounted = false;
      try {
        nbdfuse = spawn('nbdfuse', ['-r', join(fuseDir, 'disk'), `nbd://127.0.0.1:${handle.port}`], { stdio: ['ignore', 'ignore', 'pipe'] });
        let fuseErr = '';
        nbdfuse.stderr!.setEncoding('utf8').on('data', (c: string) => (fuseErr += c));
        await waitUntil(() => existsSync(join(fuseDir, 'disk')) || nbdfuse!.exitCode !== null, 'nbdfuse');
        expect(nbdfuse.exitCode, fuseErr).toBeNull();
        expect((await stat(join(fuseDir, 'disk'))).size).toBe(16 * 1024 * 1024);
        loop = (await run('losetup', ['-r', '-f', '--show', join(fuseDir, 'disk')])).trim();
        await run('mount', ['-t', 'ext4', '-o', 'ro,noload', loop, mnt]);
        mounted = true;
        expect(await readFile(join(mnt, 'hello.txt'), 'utf8')).toBe(`hello from point in time (${kind})\n`);
        expect((await readFile(join(mnt, 'dir', 'payload.bin'))).equals(payload)).toBe(true);
        expect(handle.pit.stats.gets).toBeGreaterThan(0);
      } finally {
        if (mounted) await run('umount', [mnt]);
        if (loop !== undefined) await run('losetup', ['-d', loop]);
        if (nbdfuse !== undefined && nbdfuse.exitCode === null) {
          const exited = new Promise((resolve) => nbdfuse!.once('exit', resolve));
          await run('fusermount3', ['-u', fuseDir]).catch(() => run('umount', [fuseDir]));
          if (nbdfuse.exitCode === null) nbdfuse.kill('SIGTERM'); // unmounted: it may go now, if it has not
          await exited;
        }
      }
    });
  });
}

async function run(command: string, args: string[]): Promise<string> {
  const result = await runTool(command, args);
  if (result.code !== 0) throw new Error(`${command} ${args.join(' ')} failed (${result.code}): ${result.stderr.trim()}`);
  return result.stdout;
}

/** Why a FUSE + loop-device mount cannot run here, or undefined if it can. */
async function mountUnsupported(): Promise<string | undefined> {
  const missing = missingBinaries('nbdfuse', 'fusermount3', 'losetup', 'mount', 'umount', 'mkfs.ext4', 'truncate');
  if (missing !== undefined) return missing;
  if (!existsSync('/dev/fuse')) return '/dev/fuse does not exist (no FUSE in this environment)';
  if (process.getuid?.() !== 0) return 'losetup and mount need root';
  // A loop device must be attachable (containers often have none).
  const probe = join(fixture.dir, 'loop-probe.img');
  await writeFile(probe, Buffer.alloc(1024 * 1024));
  const attached = await runTool('losetup', ['-r', '-f', '--show', probe]);
  if (attached.code !== 0) return `losetup is not permitted: ${attached.stderr.trim()}`;
  await runTool('losetup', ['-d', attached.stdout.trim()]);
  return undefined;
}
