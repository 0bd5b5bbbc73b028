// Crashes and Ctrl-C at chosen moments, at library level and deterministic: a FaultStore wraps
// the real store stack (openStore over FsStore or S3Store against s3rver) and fails or aborts at
// an exact call. Whatever happens, the repository must stay readable, list only committed points
// in time, restore them bit-exact, and accept the next backup; restore targets must never be
// left half-written.

import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { log } from '../../src/core/log.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore, planTotals } from '../../src/core/restore.js';
import { loadDelta } from '../helpers/pit.js';
import { AbortedError, StoreError } from '../../src/errors.js';
import { Repository } from '../../src/repo/repository.js';
import { openStore } from '../../src/store/open.js';
import type { ObjectStore } from '../../src/store/types.js';
import { FaultStore } from '../helpers/fault-store.js';
import { makeImage, mutateImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { FsRawObjects, type RawObjects, S3RawObjects } from '../helpers/raw-objects.js';
import { turns } from '../helpers/wait.js';

const REGION = 64 * 1024;
const BUCKET = 'crash';
const fixture = useS3Fixture('crash', [BUCKET]);

let counter = 0;

interface Fixture {
  store: ObjectStore;
  raw: RawObjects;
  source: string;
  image: Buffer;
  /** Committed points in time and the image each one holds. */
  points: Map<number, Buffer>;
  work: string;
}

/** A repository (checkpoint every 2 deltas) with `rounds` committed points; the source then changed again. */
async function makeRepo(kind: 'fs' | 's3', rounds: number, imageOptions: { zero?: number; repeated?: number } = {}): Promise<Fixture> {
  const n = ++counter;
  const work = join(fixture.dir, `${kind}-${n}`);
  await mkdir(work, { recursive: true });
  const url = kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/repo-${n}`;
  let raw: RawObjects;
  if (kind === 'fs') raw = new FsRawObjects(url);
  else {
    const s3 = new S3RawObjects(BUCKET, `repo-${n}`, fixture.server.endpoint);
    fixture.onTeardown(() => s3.destroy());
    raw = s3;
  }
  const store = openStore(url);
  const image = makeImage({ size: 2 * 1024 * 1024 + 1234, regionSize: REGION, seed: n, ...imageOptions });
  const source = join(work, 'disk.img');
  await writeFile(source, image);
  await init({ store, from: source, regionSize: REGION, spanFanout: 2 });
  const points = new Map<number, Buffer>();
  for (let round = 0; round < rounds; round++) {
    if (round > 0) await change(image, source, n * 100 + round);
    const result = await backup({ store, source, workers: 2 });
    points.set(result.seq, Buffer.from(image));
  }
  await change(image, source, n * 100 + rounds);
  return { store, raw, source, image, points, work };
}

async function change(image: Buffer, source: string, seed: number): Promise<void> {
  mutateImage(image, 6, seed);
  await writeFile(source, image);
}

async function seqs(store: ObjectStore): Promise<number[]> {
  return (await log({ store })).entries.map((e) => e.seq);
}

async function partials(path: string): Promise<string[]> {
  return (await readdir(path)).filter((name) => name.includes('.cdp-s3-partial'));
}

/** Every committed point in time is listed and restores bit-exact. */
async function expectIntact(fx: Fixture): Promise<void> {
  expect(await seqs(fx.store)).toEqual([...fx.points.keys()]);
  const out = join(fx.work, `check-${++counter}`);
  await mkdir(out);
  for (const [seq, image] of fx.points) {
    const target = join(out, `restored-${seq}.img`);
    await executeRestore(await planRestore({ store: fx.store, at: parsePointSelector(String(seq)) }), { to: target, workers: 2 });
    expect((await readFile(target)).equals(image), `point in time ${seq} restores bit-exact`).toBe(true);
  }
  expect(await partials(out)).toEqual([]);
  await rm(out, { recursive: true, force: true });
}

/** Temporary files of the local store's atomic writes ('.tmp-…'); list() skips them. */
async function tempFiles(raw: RawObjects): Promise<string[]> {
  return (await raw.keys()).filter((key) => key.split('/').some((segment) => segment.startsWith('.tmp-')));
}

async function backupRecorded(fx: Fixture): Promise<number> {
  const result = await backup({ store: fx.store, source: fx.source, workers: 2 });
  fx.points.set(result.seq, Buffer.from(fx.image));
  return result.seq;
}

for (const kind of ['fs', 's3'] as const) {
  describe(`crash and Ctrl-C (${kind} store)`, () => {
    it('Ctrl-C during backup, as the first pack upload starts: AbortedError, nothing committed, the next backup is correct', async () => {
      const fx = await makeRepo(kind, 1);
      const controller = new AbortController();
      const fault = new FaultStore(fx.store, {
        beforePut: (key) => {
          if (key.startsWith('packs/') && !controller.signal.aborted) controller.abort(new Error('SIGINT'));
        },
      });
      const error = await backup({ store: fault, source: fx.source, signal: controller.signal, workers: 2 }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(AbortedError);
      expect((error as AbortedError).code).toBe('ABORTED');
      expect(fault.puts.some((key) => key.startsWith('packs/'))).toBe(true);
      // Only packs (and the backup's own lock) were put: no delta, no checkpoint.
      expect(fault.puts.filter((key) => !key.startsWith('packs/') && !key.startsWith('locks/'))).toEqual([]);
      expect(await fx.raw.keys('locks/')).toEqual([]);
      expect(await fx.raw.keys('deltas/')).toEqual(['deltas/0000000000000001']);
      expect(await tempFiles(fx.raw)).toEqual([]);
      await expectIntact(fx);
      expect(await backupRecorded(fx)).toBe(2);
      await expectIntact(fx);
    });

    it('Ctrl-C at the last moment, as the delta is about to be written: AbortedError, nothing committed', async () => {
      const fx = await makeRepo(kind, 1);
      const controller = new AbortController();
      const fault = new FaultStore(fx.store, {
        beforePut: (key) => {
          if (key.startsWith('deltas/')) controller.abort(new Error('SIGINT'));
        },
      });
      await expect(backup({ store: fault, source: fx.source, signal: controller.signal, workers: 2 })).rejects.toBeInstanceOf(AbortedError);
      expect(fault.puts.filter((key) => key.startsWith('deltas/'))).toEqual(['deltas/0000000000000002']);
      expect(await fx.raw.keys('deltas/')).toEqual(['deltas/0000000000000001']);
      await expectIntact(fx);
      expect(await backupRecorded(fx)).toBe(2);
      await expectIntact(fx);
    });

    it('a backup that dies between its data and its delta: previous points intact, orphan packs harmless, the next backup correct', async () => {
      const fx = await makeRepo(kind, 1);
      const packsBefore = await fx.raw.keys('packs/');
      const crash = new Error('injected crash before the delta');
      const fault = new FaultStore(fx.store, {
        beforePut: (key) => {
          if (key.startsWith('deltas/')) throw crash;
        },
      });
      await expect(backup({ store: fault, source: fx.source, workers: 2 })).rejects.toBe(crash);
      // The data went up, the delta did not: the packs are orphans that nothing references.
      const orphans = (await fx.raw.keys('packs/')).filter((key) => !packsBefore.includes(key));
      expect(orphans.length).toBeGreaterThan(0);
      expect(orphans.every((key) => key.startsWith('packs/0000000000000002-'))).toBe(true);
      expect(await fx.raw.keys('deltas/')).toEqual(['deltas/0000000000000001']);
      await expectIntact(fx);

      expect(await backupRecorded(fx)).toBe(2);
      const repo = await Repository.open(fx.store);
      const delta = await loadDelta(repo, 2);
      expect(delta.packs.filter((pack) => orphans.includes(pack))).toEqual([]);
      for (const orphan of orphans) expect(await fx.raw.keys(orphan)).toEqual([orphan]); // still there, harmless
      await expectIntact(fx);
    });

    it('a span that fails to write: the point is committed, reported, restores by folding the runs, and the next commit writes the span', async () => {
      const fx = await makeRepo(kind, 1);
      const crash = new Error('injected failure of the span');
      let failing = true;
      const fault = new FaultStore(fx.store, {
        beforePut: (key) => {
          if (failing && key.startsWith('spans/')) throw crash;
        },
      });
      const result = await backup({ store: fault, source: fx.source, workers: 2 });
      expect(result.seq).toBe(2);
      expect(result.spans).toBe(0);
      expect(result.spanError).toMatch(/injected failure of the span/);
      expect(fault.puts).toContain('spans/01/0000000000000002');
      expect(await fx.raw.keys('spans/')).toEqual([]);
      // The delta is the commit point: point in time 2 exists without its span.
      fx.points.set(2, Buffer.from(fx.image));
      await expectIntact(fx);
      failing = false;
      await change(fx.image, fx.source, 77);
      expect(await backupRecorded(fx)).toBe(3);
      await change(fx.image, fx.source, 78);
      expect(await backupRecorded(fx)).toBe(4);
      // Point 4 is due spans 1/4 and 2/4, and 2/4 needs 1/2: the missing span is written then.
      expect(await fx.raw.keys('spans/')).toEqual(['spans/01/0000000000000002', 'spans/01/0000000000000004', 'spans/02/0000000000000004']);
      await expectIntact(fx);
    });

    it('Ctrl-C during restore, after the first ranged GET: AbortedError, no target, no temporary file; an existing target is kept', async () => {
      const fx = await makeRepo(kind, 3);
      const out = join(fx.work, 'out');
      await mkdir(out);
      for (const existing of [false, true]) {
        const target = join(out, 'restored.img');
        if (existing) await writeFile(target, 'the old contents');
        const controller = new AbortController();
        let served = 0;
        const fault = new FaultStore(fx.store, {
          afterGet: (_key, options) => {
            if (options?.range !== undefined && ++served === 1) controller.abort(new Error('SIGINT'));
          },
        });
        const plan = await planRestore({ store: fault, at: parsePointSelector('latest') });
        expect((await planTotals(plan)).requests).toBeGreaterThan(1);
        // One ranged GET at a time, so the abort lands before the second is issued.
        const error = await executeRestore(plan, { to: target, force: existing, signal: controller.signal, workers: 2, fetchesInFlight: 1 }).catch(
          (e: unknown) => e,
        );
        expect(error).toBeInstanceOf(AbortedError);
        expect((error as AbortedError).code).toBe('ABORTED');
        // The store served one range; any later call was refused at once for the aborted signal.
        expect(served).toBe(1);
        if (existing) expect(await readFile(target, 'utf8')).toBe('the old contents');
        else await expect(stat(target)).rejects.toThrow();
        expect(await partials(out)).toEqual([]);
        expect(await readdir(out)).toEqual(existing ? ['restored.img'] : []);
      }
      await expectIntact(fx);
    });

    it('a restore to standard output that fails on a later region reports that failure and leaves no unhandled rejection', async () => {
      // Regions are fetched ahead of the one being written; one failing while an earlier one is
      // awaited used to become an unhandled rejection (which kills the CLI process with a stack trace).
      const fx = await makeRepo(kind, 1, { zero: 0, repeated: 0 });
      const failure = new StoreError('permanent', 'injected: the second region cannot be read');
      let ranged = 0;
      let fetchFailed!: () => void;
      const failedFetch = new Promise<void>((resolve) => (fetchFailed = resolve));
      const fault = new FaultStore(fx.store, {
        beforeGet: (_key, options) => {
          if (options?.range !== undefined && ++ranged === 2) {
            fetchFailed();
            throw failure;
          }
        },
      });
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown): void => void unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      try {
        const chunks: Buffer[] = [];
        const stdout = new Writable({
          highWaterMark: 1,
          write(chunk: Buffer, _encoding, callback) {
            chunks.push(chunk);
            // A slow consumer: the loop waits for 'drain' while the failing fetch runs.
            void failedFetch.then(() => setImmediate(callback));
          },
        });
        const plan = await planRestore({ store: fault, at: parsePointSelector('1') });
        // One region a GET, so the second GET is the second region.
        await expect(executeRestore(plan, { to: '-', stdout, workers: 2, rangeBytes: REGION })).rejects.toBe(failure);
        await turns(); // an unhandled rejection is reported at the end of the turn it happens in
        expect(unhandled).toEqual([]);
        // Only verified regions before the failing one were written.
        expect(Buffer.concat(chunks).equals(fx.points.get(1)!.subarray(0, REGION))).toBe(true);
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
    });
  });
}
