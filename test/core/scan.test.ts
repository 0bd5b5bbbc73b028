// The scan-and-compare method, claim by claim, with deterministic interleavings of host writes
// (through the in-process writer) and discrepancies made the honest way: bytes written to the
// primary behind cdp-s3's back. Every case runs against the local store and the S3 server.

import { createHash } from 'node:crypto';
import { open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { log } from '../../src/core/log.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { scan } from '../../src/core/scan.js';
import { geometry } from '../../src/model/regions.js';
import { loadDelta } from '../helpers/pit.js';
import { Repository } from '../../src/repo/repository.js';
import type { ObjectStore } from '../../src/store/types.js';
import { InProcessWriter } from '../../src/volume/changes.js';
import { DirtyRegionLog } from '../../src/volume/dirty-region-log.js';
import { cli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
const REGIONS = 48;
const BUCKET = 'scan';
const fixture = useS3Fixture('scan', [BUCKET]);
let counter = 0;

interface Fixture {
  store: ObjectStore;
  repoUrl: string;
  source: string;
  work: string;
}

/** A repository with points in time 1 (base: regions 0–39 hold data, 40–47 are zero), 2 (region 5) and 3 (region 9). */
async function makeFixture(kind: 'fs' | 's3'): Promise<Fixture> {
  const n = ++counter;
  const { work, repoUrl, store } = await fixture.repository(kind, BUCKET, n);
  const image = makeImage({ size: REGIONS * REGION, regionSize: REGION, seed: n, zero: 0, repeated: 0 });
  image.fill(0, 40 * REGION);
  const source = join(work, 'disk.img');
  await writeFile(source, image);
  await init({ store, from: source, regionSize: REGION, spanFanout: 64 });
  await backup({ store, source, workers: 2 });
  for (const region of [5, 9]) {
    await behindTheBack(source, region, 0x10 + region);
    await backup({ store, source, workers: 2 });
  }
  return { store, repoUrl, source, work };
}

/** Writes the primary directly, so cdp-s3 does not know: the honest way to make a discrepancy. */
async function behindTheBack(source: string, region: number, fill: number): Promise<void> {
  const file = await open(source, 'r+');
  await file.write(Buffer.alloc(100, fill), 0, 100, region * REGION + 1000);
  await file.close();
}

async function writerFor(f: Fixture): Promise<InProcessWriter> {
  return InProcessWriter.open(f.source, geometry(REGIONS * REGION, REGION));
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

async function restoreDigest(f: Fixture, at: string, allowSuspect = false): Promise<{ seq: number; digest: string; skipped: number[] }> {
  const plan = await planRestore({ store: f.store, at: parsePointSelector(at), allowSuspect });
  const target = join(f.work, `restore-${++counter}.img`);
  await executeRestore(plan, { to: target, workers: 2 });
  return { seq: plan.seq, digest: sha(await readFile(target)), skipped: plan.skipped.map((s) => s.seq) };
}

async function changedRegions(f: Fixture, seq: number): Promise<number[]> {
  const repo = await Repository.open(f.store);
  return (await loadDelta(repo, seq)).regions;
}

for (const kind of ['fs', 's3'] as const) {
  describe(`scan (${kind} store)`, () => {
    it('claims 1, 2: an in-sync primary has no discrepancies, and nothing is written but the record', async () => {
      const f = await makeFixture(kind);
      const result = await scan({ store: f.store, source: f.source, workers: 2 });
      expect(result).toMatchObject({ scanned: REGIONS, discrepancies: 0, revised: 0, repaired: 0, fixupSeq: undefined, suspect: [] });
      expect((await log({ store: f.store })).entries.map((e) => e.seq)).toEqual([1, 2, 3]);
      expect(result.record).toMatch(/^scans\//);
    });

    it('claim 11: marks exactly the deltas from the newest one holding the region up to the scan start; the fix-up repairs it', async () => {
      const f = await makeFixture(kind);
      await behindTheBack(f.source, 5, 0xee); // last recorded by delta 2
      const result = await scan({ store: f.store, source: f.source, workers: 2 });
      expect(result.discrepancies).toBe(1);
      expect(result.discrepantRegions).toEqual([5]);
      expect(result.suspect).toEqual([3, 2]);
      expect(result.reachedChainStart).toBe(false);
      expect(result.fixupSeq).toBe(4);
      expect(await changedRegions(f, 4)).toEqual([5]);
      // After the repair, the newest point in time is the primary, bit-exact.
      const latest = await restoreDigest(f, 'latest');
      expect(latest.seq).toBe(4);
      expect(latest.digest).toBe(sha(await readFile(f.source)));
      // Restore passes over suspect points unless told otherwise.
      const at3 = await restoreDigest(f, '3');
      expect(at3.seq).toBe(1);
      expect(at3.skipped).toEqual([3, 2]);
      expect((await restoreDigest(f, '3', true)).seq).toBe(3);
      // The log shows the marks with the scan that made them, and the scan as an event.
      const timeline = (await log({ store: f.store })).timeline;
      const suspects = timeline.filter((t) => t.type === 'delta' && t.suspect).map((t) => (t.type === 'delta' ? t.seq : 0));
      expect(suspects).toEqual([2, 3]);
      const scans = timeline.filter((t) => t.type === 'scan');
      expect(scans).toHaveLength(1);
      const marked = timeline.find((t) => t.type === 'delta' && t.seq === 2);
      expect(marked?.type === 'delta' && marked.marks[0]?.record).toBe(result.record);
    });

    it('claim 11: a discrepant region that no delta records marks every point in time', async () => {
      const f = await makeFixture(kind);
      await behindTheBack(f.source, 44, 0xab); // zero at the base, never written since
      const result = await scan({ store: f.store, source: f.source, workers: 2 });
      expect(result.suspect).toEqual([3, 2, 1]);
      expect(result.reachedChainStart).toBe(true);
      await expect(planRestore({ store: f.store, at: parsePointSelector('3') })).rejects.toThrow(/every point in time at or before 3 is marked untrusted/);
      expect((await restoreDigest(f, 'latest')).digest).toBe(sha(await readFile(f.source)));
    });

    it('claims 7, 8: a region the host writes during the scan is subtracted, not fixed up by the scan', async () => {
      const f = await makeFixture(kind);
      const writer = await writerFor(f);
      await behindTheBack(f.source, 9, 0x77); // a real discrepancy, last recorded by delta 3
      let wrote = false;
      const result = await scan({
        store: f.store,
        source: f.source,
        changes: writer,
        workers: 2,
        readAhead: 2,
        hooks: {
          // At the first region handled, at most readAhead (2) regions have been read: 30 is not one of them.
          afterScanRead: async () => {
            if (wrote) return;
            wrote = true;
            await writer.write(30 * REGION + 5, Buffer.alloc(10, 0x55));
          },
        },
      });
      expect(result.writtenDuringScan).toBe(1);
      expect(result.discrepantRegions).toEqual([9, 30]); // both differ from the PIT map…
      expect(result.revised).toBe(1); // …but 30 was the host's own write during the scan
      expect(result.suspect).toEqual([3]);
      expect(await changedRegions(f, result.fixupSeq!)).toEqual([9]);
      expect(Array.from(writer.pending())).toEqual([30]); // left to the next delta
      await writer.close();
    });

    it('claim 10: the fix-up delta is the host change map (copy interval) merged with the revised compare map', async () => {
      const f = await makeFixture(kind);
      const writer = await writerFor(f);
      await behindTheBack(f.source, 5, 0x66);
      await behindTheBack(f.source, 12, 0x67);
      const result = await scan({
        store: f.store,
        source: f.source,
        changes: writer,
        workers: 2,
        hooks: {
          copyStarted: async () => {
            await writer.write(20 * REGION, Buffer.alloc(REGION, 0x20)); // host writes during the copy interval
            await writer.write(5 * REGION + 7, Buffer.alloc(3, 0x21)); // and to a region being repaired
          },
        },
      });
      expect(result.revised).toBe(2);
      expect(result.writtenDuringCopy).toBe(2);
      expect(await changedRegions(f, result.fixupSeq!)).toEqual([5, 12, 20]);
      expect(Array.from(writer.pending())).toEqual([]); // the fix-up committed the host's writes too
      expect((await restoreDigest(f, 'latest')).digest).toBe(sha(await readFile(f.source)));
      await writer.close();
    });

    it('claim 3: host changes since the previous delta are sealed as a delta before the scan, not reported as discrepancies', async () => {
      const f = await makeFixture(kind);
      const writer = await writerFor(f);
      await writer.write(3 * REGION, Buffer.alloc(REGION, 0x33));
      const result = await scan({ store: f.store, source: f.source, changes: writer, workers: 2 });
      expect(result.presentSeq).toBe(4);
      expect(result.scanStartSeq).toBe(4);
      expect(result.discrepancies).toBe(0);
      expect(await changedRegions(f, 4)).toEqual([3]);
      expect(Array.from(writer.pending())).toEqual([]);
      expect((await restoreDigest(f, 'latest')).digest).toBe(sha(await readFile(f.source)));
      await writer.close();
    });

    it('claims 5, 6: with a dirty region log only its regions are scanned, and committed ones are cleared', async () => {
      const f = await makeFixture(kind);
      const repo = await Repository.open(f.store);
      const drlPath = join(f.work, 'disk.drl');
      const drl = await DirtyRegionLog.create(drlPath, { volumeId: repo.config.volumeId, regionCount: REGIONS, regionSize: REGION });
      await drl.mark([5, 6]);
      await drl.close();
      await behindTheBack(f.source, 5, 0x44); // listed
      await behindTheBack(f.source, 30, 0x45); // not listed: this scan does not see it
      const result = await scan({ store: f.store, source: f.source, drl: drlPath, workers: 2 });
      expect(result.scanned).toBe(2);
      expect(result.discrepantRegions).toEqual([5]);
      const reopened = await DirtyRegionLog.open(drlPath, { volumeId: repo.config.volumeId, regionCount: REGIONS, regionSize: REGION });
      expect(reopened.count()).toBe(0);
      await reopened.close();
      // A full scan finds the other one.
      expect((await scan({ store: f.store, source: f.source, workers: 2 })).discrepantRegions).toEqual([30]);
    });

    it('--dry-run reports the discrepancies and would-be suspects and writes nothing', async () => {
      const f = await makeFixture(kind);
      await behindTheBack(f.source, 5, 0x99);
      const result = await scan({ store: f.store, source: f.source, dryRun: true, workers: 2 });
      expect(result).toMatchObject({ discrepancies: 1, suspect: [3, 2], fixupSeq: undefined, record: undefined, dryRun: true });
      const after = await log({ store: f.store });
      expect(after.entries.map((e) => [e.seq, e.suspect])).toEqual([
        [1, false],
        [2, false],
        [3, false],
      ]);
      expect(after.timeline.filter((t) => t.type === 'scan')).toEqual([]);
    });

    it('downloads no region data: only metadata', async () => {
      const f = await makeFixture(kind);
      const result = await scan({ store: f.store, source: f.source, workers: 2 });
      const regionBytes = REGIONS * REGION;
      expect(result.bytesFetched).toBeGreaterThan(0);
      expect(result.bytesFetched).toBeLessThan(regionBytes / 50);
    });

    it('the CLI exits 0 in sync and 10 on discrepancies, with a JSON report', async () => {
      const f = await makeFixture(kind);
      const inSync = await cli('--repo', f.repoUrl, '--json', 'scan', f.source);
      expect(inSync.code, inSync.stderr).toBe(0);
      await behindTheBack(f.source, 9, 0x31);
      const found = await cli('--repo', f.repoUrl, '--json', 'scan', f.source);
      expect(found.code, found.stderr).toBe(10);
      const report = JSON.parse(found.stdout) as Record<string, unknown>;
      expect(report).toMatchObject({ scanned: REGIONS, discrepancies: 1, repaired: 1, fixupSeq: 4, suspect: [3] });
      const text = await cli('--repo', f.repoUrl, 'log');
      expect(text.stdout).toMatch(/SUSPECT \(scans\/\d+-[0-9a-f]+\)/);
      expect(text.stdout).toMatch(/scan .* 48 regions, 1 region differed, fix-up 4, marked 1 suspect/);
    });
  });
}
