// Every writer (backup, scan, protect's direct shipments and its spool drain) reads the marks the
// same way before each delta: it never deduplicates against stored bytes a verify found damaged,
// and while a marks object cannot be read (what it named as damaged is unknown) it stores every
// changed region anew instead of deduplicating against earlier packs.

import { open, readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { log } from '../../src/core/log.js';
import { ProtectedVolume } from '../../src/core/protect.js';
import { scan } from '../../src/core/scan.js';
import { marksKey } from '../../src/repo/records.js';
import { loadMap } from '../helpers/pit.js';
import { Repository } from '../../src/repo/repository.js';
import { putMarks } from '../../src/repo/trust.js';
import type { ObjectStore } from '../../src/store/types.js';
import { FaultStore } from '../helpers/fault-store.js';
import { REGION, sha, useProtectFixture } from '../helpers/protect-fixture.js';

const { make: makeFixture, restoreBytes } = useProtectFixture('writertrust');

/** Region 5's bytes: the base stored them, so a region given the same content deduplicates against it. */
async function region5(source: string): Promise<Buffer> {
  return (await readFile(source)).subarray(5 * REGION, 6 * REGION);
}

/** Writes `bytes` at `region` behind cdp-s3's back. */
async function overwrite(source: string, region: number, bytes: Buffer): Promise<void> {
  const file = await open(source, 'r+');
  await file.write(bytes, 0, bytes.length, region * REGION);
  await file.close();
}

async function newestStoredBytes(store: ObjectStore): Promise<number> {
  return (await log({ store })).entries.at(-1)!.bytes;
}

/** The store with every put but the lock's failing while `isDown()`. */
function outage(store: ObjectStore, isDown: () => boolean): FaultStore {
  return new FaultStore(store, {
    beforePut: (key) => {
      if (isDown() && !key.startsWith('locks/')) throw new Error('connect ECONNREFUSED (injected)');
    },
  });
}

for (const kind of ['fs', 's3'] as const) {
  describe(`writers and the trust marks (${kind} store)`, () => {
    it('while a marks object cannot be read, backup, scan and protect (direct and from the spool) store changed regions anew', async () => {
      const f = await makeFixture(kind);
      const same = await region5(f.source);
      // Its writer had seen no point in time: it concerns none, so restores are unaffected; only what it named as damaged is unknown.
      const unreadable = marksKey(1, 0);
      await f.store.put(unreadable, Buffer.from('not a marks object'));

      await overwrite(f.source, 7, same);
      const backedUp = await backup({ store: f.store, source: f.source, workers: 2 });
      expect(backedUp).toMatchObject({ regionsChanged: 1, bytesStored: REGION + 1, unreadableMarks: [unreadable] }); // in its frame

      await overwrite(f.source, 9, same); // behind cdp-s3's back: scan repairs it
      const scanned = await scan({ store: f.store, source: f.source, workers: 2 });
      expect(scanned).toMatchObject({ discrepancies: 1, unreadableMarks: [unreadable] });
      expect(await newestStoredBytes(f.store)).toBe(REGION + 1);

      let down = false;
      const logs: string[] = [];
      const volume = await ProtectedVolume.open({ store: outage(f.store, () => down), source: f.source, drl: f.drl, log: (l) => logs.push(l) });
      await volume.write(11 * REGION, same, false);
      expect(await volume.sealAndShip()).toMatchObject({ regions: 1 });
      expect(await newestStoredBytes(f.store)).toBe(REGION + 1);
      down = true;
      await volume.write(13 * REGION, same, false);
      expect(await volume.sealAndShip()).toBeUndefined(); // spooled
      down = false;
      expect(await volume.sealAndShip()).toMatchObject({ regions: 1 }); // from the spool
      expect(await newestStoredBytes(f.store)).toBe(REGION + 1);
      await volume.close();
      expect(logs.filter((l) => l.includes(`trust marks ${unreadable} cannot be read`))).toHaveLength(1); // once, not per shipment
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });

    it('the spool drain does not deduplicate against stored bytes a verify marked damaged', async () => {
      const f = await makeFixture(kind);
      const same = await region5(f.source);
      const repo = await Repository.open(f.store);
      const location = (await loadMap(repo, 1)).location(5)!;
      await putMarks(f.store, { created: Date.now(), record: "verifies/0000000000000001-test", marks: [], damaged: [{ ...location, length: REGION, problem: "corrupt" }] }, 1);
      let down = true;
      const volume = await ProtectedVolume.open({ store: outage(f.store, () => down), source: f.source, drl: f.drl });
      await volume.write(13 * REGION, same, false);
      expect(await volume.sealAndShip()).toBeUndefined(); // spooled
      down = false;
      expect(await volume.sealAndShip()).toEqual({ seq: 2, regions: 1 });
      expect(await newestStoredBytes(f.store)).toBe(REGION + 1);
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });
  });
}
