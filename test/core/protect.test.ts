// ProtectedVolume: the write path and the shipper of continuous protection, driven through its
// NbdExport interface (the NBD tests drive the same object with real clients).

import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { log } from '../../src/core/log.js';
import { ProtectedVolume } from '../../src/core/protect.js';
import { scan } from '../../src/core/scan.js';
import { forceUnlock } from '../../src/repo/lock.js';
import { Repository } from '../../src/repo/repository.js';
import type { ObjectStore } from '../../src/store/types.js';
import { DirtyRegionLog } from '../../src/volume/dirty-region-log.js';
import { FaultStore } from '../helpers/fault-store.js';
import { REGION, REGIONS, sha, useProtectFixture } from '../helpers/protect-fixture.js';

const { fixture, make: makeFixture, restoreBytes } = useProtectFixture('protect');

/** The store with every put but the lock's failing while `isDown()`: an outage. */
function outage(store: ObjectStore, isDown: () => boolean = () => true): FaultStore {
  return new FaultStore(store, {
    beforePut: (key) => {
      if (isDown() && !key.startsWith('locks/')) throw new Error('connect ECONNREFUSED (injected)');
    },
  });
}

for (const kind of ['fs', 's3'] as const) {
  describe(`protect (${kind} store)`, () => {
    it('ships what is written as a point in time, and the DRL clears once it commits', async () => {
      const f = await makeFixture(kind);
      const volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl });
      await volume.write(3 * REGION + 100, Buffer.alloc(5000, 0xaa), false);
      await volume.writeZeroes(10 * REGION, 2 * REGION, false); // two whole regions become zero
      await volume.trim(20 * REGION, 100, false); // part of a region
      expect(volume.status().unshippedRegions).toBe(4);
      expect(volume.status().drlRegions).toBe(4);
      const shipped = await volume.sealAndShip();
      expect(shipped).toEqual({ seq: 2, regions: 4 });
      expect(volume.status()).toMatchObject({ seq: 2, lagMs: 0, drlRegions: 0, unshippedRegions: 0 });
      const entry = (await log({ store: f.store })).entries[1]!;
      // Zeroed regions ship no data; the 5000-byte write ships its two blocks, the 100-byte trim
      // its one (patches in their frames: a codec byte, 32-byte digest, 2-byte bitmap, the blocks).
      expect(entry.bytes).toBe(1 + 34 + 2 * 4096 + (1 + 34 + 4096));
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });

    it('crash consistency: a point in time holds the content at its seal, not writes during shipping', async () => {
      const f = await makeFixture(kind);
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      let holding = true;
      let putReached!: () => void;
      const shippingHeld = new Promise<void>((resolve) => (putReached = resolve));
      const slow = new FaultStore(f.store, {
        beforePut: async (key) => {
          if (holding && key.startsWith('packs/')) {
            putReached();
            await held; // shipping is held back
          }
        },
      });
      const volume = await ProtectedVolume.open({ store: slow, source: f.source, drl: f.drl });
      await volume.write(5 * REGION, Buffer.alloc(2 * REGION, 0xa1), false); // A
      const a = await readFile(f.source);
      const shipping = volume.sealAndShip(); // seals now
      await shippingHeld; // sealed, read and packed: its pack is on the way
      await volume.write(5 * REGION, Buffer.alloc(2 * REGION, 0xb2), false); // B, to the same regions, while shipping
      holding = false;
      release();
      expect(await shipping).toEqual({ seq: 2, regions: 2 });
      const b = await readFile(f.source);
      expect(sha(await restoreBytes(f.store, f.work, '2'))).toBe(sha(a)); // holds A, not B
      expect(await volume.sealAndShip()).toEqual({ seq: 3, regions: 2 });
      expect(sha(await restoreBytes(f.store, f.work, '3'))).toBe(sha(b));
      await volume.close();
    });

    it('keeps serving writes while the store is unreachable, shows the lag, and ships everything when it is back', async () => {
      const f = await makeFixture(kind);
      let down = true;
      const flaky = outage(f.store, () => down);
      let now = 1_000_000_000_000;
      const volume = await ProtectedVolume.open({ store: flaky, source: f.source, drl: f.drl, clock: () => now });
      await volume.write(1 * REGION, Buffer.alloc(10, 1), false);
      now += 1000;
      expect(await volume.sealAndShip()).toBeUndefined(); // failed: kept in the spool
      await volume.write(2 * REGION, Buffer.alloc(10, 2), false);
      now += 4000;
      const lagging = volume.status();
      expect(lagging.lagMs).toBe(5000);
      expect(lagging.unshippedRegions).toBe(2);
      expect(lagging.lastShipError).toMatch(/ECONNREFUSED/);
      down = false;
      now += 1000;
      expect(await volume.sealAndShip()).toEqual({ seq: 3, regions: 1 }); // the failed point (2), then this one
      expect(volume.status()).toMatchObject({ lagMs: 0, drlRegions: 0, lastShipError: undefined });
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });

    it('during an outage each interval is kept in the local spool, and every point in time ships when the store is back', async () => {
      const f = await makeFixture(kind);
      let down = true;
      const flaky = outage(f.store, () => down);
      const volume = await ProtectedVolume.open({ store: flaky, source: f.source, drl: f.drl });
      await volume.write(1 * REGION, Buffer.alloc(REGION, 0xa1), false);
      expect(await volume.sealAndShip()).toBeUndefined(); // fails: the outage begins, the point is spooled
      const zeroth = await readFile(f.source);
      await volume.write(2 * REGION, Buffer.alloc(REGION, 0xb2), false);
      expect(await volume.sealAndShip()).toBeUndefined(); // spooled: region 2
      const first = await readFile(f.source);
      await volume.write(1 * REGION, Buffer.alloc(REGION, 0xc3), false);
      expect(await volume.sealAndShip()).toBeUndefined(); // spooled: region 1 again
      const second = await readFile(f.source);
      expect(volume.status()).toMatchObject({ spooledPoints: 3, spoolBytes: 3 * REGION, unshippedRegions: 2 });
      down = false;
      await volume.write(3 * REGION, Buffer.alloc(10, 0xd4), false);
      expect(await volume.sealAndShip()).toEqual({ seq: 5, regions: 1 }); // spool drained first (2, 3, 4), then this one
      expect(volume.status()).toMatchObject({ spooledPoints: 0, spoolBytes: 0, drlRegions: 0, unshippedRegions: 0 });
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, '2'))).toBe(sha(zeroth));
      expect(sha(await restoreBytes(f.store, f.work, '3'))).toBe(sha(first));
      expect(sha(await restoreBytes(f.store, f.work, '4'))).toBe(sha(second));
      expect(sha(await restoreBytes(f.store, f.work, '5'))).toBe(sha(await readFile(f.source)));
    });

    it('a crash during an outage: the spooled points in time survive the restart and ship first, in order', async () => {
      const f = await makeFixture(kind);
      const down = outage(f.store);
      const spoolDir = join(f.work, 'spool');
      const first = await ProtectedVolume.open({ store: down, source: f.source, drl: f.drl, spoolDir });
      await first.write(1 * REGION, Buffer.alloc(REGION, 0xa1), false);
      expect(await first.sealAndShip()).toBeUndefined(); // fails: the outage begins; spooled: point 2 (region 1)
      await first.write(2 * REGION, Buffer.alloc(REGION, 0xb2), false);
      expect(await first.sealAndShip()).toBeUndefined(); // spooled: point 3 (region 2)
      const atTwo = await readFile(f.source);
      await first.write(1 * REGION, Buffer.alloc(REGION, 0xc3), false);
      expect(await first.sealAndShip()).toBeUndefined(); // spooled: point 4 (region 1)
      const atThree = await readFile(f.source);
      await first.write(5 * REGION, Buffer.alloc(100, 0xd4), true); // written after the last seal
      // The process dies here, the store comes back, protect starts again.
      const logs: string[] = [];
      const again = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, spoolDir, forceUnlock: true, log: (l) => logs.push(l) });
      expect(logs.some((l) => /3 points in time from before the restart/.test(l))).toBe(true);
      expect(again.status()).toMatchObject({ spooledPoints: 3, spoolBytes: 3 * REGION });
      expect(await again.sealAndShip()).toEqual({ seq: 5, regions: 3 }); // 2, 3 and 4 from the spool, then the DRL's regions
      await again.close();
      expect(sha(await restoreBytes(f.store, f.work, '3'))).toBe(sha(atTwo));
      expect(sha(await restoreBytes(f.store, f.work, '4'))).toBe(sha(atThree));
      expect(sha(await restoreBytes(f.store, f.work, '5'))).toBe(sha(await readFile(f.source)));
      expect(await readdir(spoolDir)).toEqual([]);
      await forceUnlock(f.store);
    });

    it('a spool left by a crash: a damaged segment and those after it are dropped, a committed one is not shipped twice', async () => {
      const f = await makeFixture(kind);
      let down = true;
      const flaky = outage(f.store, () => down);
      const spoolDir = join(f.work, 'spool');
      const first = await ProtectedVolume.open({ store: flaky, source: f.source, drl: f.drl, spoolDir });
      await first.write(1 * REGION, Buffer.alloc(REGION, 0xa1), false);
      await first.sealAndShip(); // the outage begins; spooled: point 2
      for (const [region, fill] of [[2, 0xb2], [3, 0xc3], [4, 0xd4]] as const) {
        await first.write(region * REGION, Buffer.alloc(REGION, fill), false);
        await first.sealAndShip(); // spooled: points 3, 4, 5
      }
      expect(first.status().spooledPoints).toBe(4);
      const saved = new Map<string, Buffer>();
      for (const name of await readdir(spoolDir)) saved.set(name, await readFile(join(spoolDir, name)));
      down = false;
      expect(await first.sealAndShip()).toEqual({ seq: 5, regions: 1 }); // drained: 2, 3, 4, 5
      // Crash "between commit and removal" for points 2-5, and point 6's segment damaged: put the
      // old files back as a crash would have left them, plus a torn later segment.
      for (const [name, bytes] of saved) await writeFile(join(spoolDir, name), bytes);
      const third = [...saved.keys()].filter((n) => n.endsWith('.idx')).sort()[2]!;
      const torn = Buffer.from(saved.get(third)!);
      torn[20] = torn[20]! ^ 0xff;
      await writeFile(join(spoolDir, '00000009.idx'), torn);
      await writeFile(join(spoolDir, '00000009.bin'), saved.get(third.replace('.idx', '.bin'))!);
      const logs: string[] = [];
      const again = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, spoolDir, forceUnlock: true, log: (l) => logs.push(l) });
      expect(again.status().spooledPoints).toBe(0); // 2-5 are committed; the damaged one is dropped
      expect(logs.some((l) => /00000009\.idx cannot be shipped/.test(l))).toBe(true);
      expect(await readdir(spoolDir)).toEqual([]);
      expect((await log({ store: f.store })).entries.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5]);
      await again.close();
      await forceUnlock(f.store);
    });

    it('a spooled segment whose number the chain has given to another delta is not taken for committed', async () => {
      const f = await makeFixture(kind);
      const down = outage(f.store);
      const spoolDir = join(f.work, 'spool');
      const first = await ProtectedVolume.open({ store: down, source: f.source, drl: f.drl, spoolDir });
      await first.write(1 * REGION, Buffer.alloc(REGION, 0xa1), false);
      await first.sealAndShip(); // the outage begins
      await first.write(2 * REGION, Buffer.alloc(REGION, 0xb2), false);
      await first.sealAndShip(); // spooled, expecting to become point 2
      // The process dies; meanwhile point 2 is taken by another delta (as a shipment that timed
      // out but landed would): here a backup of the disk after a further change.
      await first.write(3 * REGION, Buffer.alloc(REGION, 0xc3), false);
      await forceUnlock(f.store);
      await backup({ store: f.store, source: f.source, workers: 1 });
      const logs: string[] = [];
      const again = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, spoolDir, forceUnlock: true, log: (l) => logs.push(l) });
      expect(logs.some((l) => /is not point in time 2 of the chain/.test(l))).toBe(true);
      expect(again.status().spooledPoints).toBe(0);
      await again.sealAndShip(); // the DRL's regions, on top of point 2
      await again.close();
      expect((await log({ store: f.store })).entries.map((e) => e.seq)).toEqual([1, 2, 3]);
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
      await forceUnlock(f.store);
    });

    it('a delta the store took but whose put was reported failed is not shipped again from the spool (direct shipment, then drain)', async () => {
      for (const failing of ['direct', 'drain'] as const) {
        const f = await makeFixture(kind);
        let down = failing === 'drain';
        let lostReplies = failing === 'direct' ? 1 : 0;
        const store = new FaultStore(f.store, {
          beforePut: (key) => {
            if (down && !key.startsWith('locks/')) throw new Error('connect ECONNREFUSED (injected)');
          },
          afterPut: (key) => {
            if (lostReplies > 0 && key.startsWith('deltas/')) {
              lostReplies--;
              throw new Error('socket hang up after the store took the delta (injected)');
            }
          },
        });
        const logs: string[] = [];
        const volume = await ProtectedVolume.open({ store, source: f.source, drl: f.drl, log: (line) => logs.push(line) });
        await volume.write(1 * REGION, Buffer.alloc(REGION, 0xa1), false);
        const atFirst = await readFile(f.source);
        expect(await volume.sealAndShip(), failing).toBeUndefined(); // failed (direct: after delta 2 landed); spooled as point 2
        if (failing === 'drain') {
          down = false;
          lostReplies = 1;
        }
        await volume.write(2 * REGION, Buffer.alloc(REGION, 0xb2), false);
        // Spooled as point 3, then the drain. Direct: point 2 is in the chain already, only 3 ships.
        // Drain: delta 2 lands but its reply is lost; the next drain finds it there and ships only 3.
        let shipped = await volume.sealAndShip();
        if (failing === 'drain') {
          expect(shipped, failing).toBeUndefined();
          shipped = await volume.sealAndShip();
        }
        expect(shipped, failing).toEqual({ seq: 3, regions: 1 });
        expect(volume.status(), failing).toMatchObject({ seq: 3, spooledPoints: 0, drlRegions: 0, unshippedRegions: 0 });
        await volume.close();
        expect(logs.some((l) => /point in time 2 from the spool was committed already/.test(l)), failing).toBe(true);
        expect((await log({ store: f.store })).entries.map((e) => e.seq), failing).toEqual([1, 2, 3]);
        expect(sha(await restoreBytes(f.store, f.work, '2')), failing).toBe(sha(atFirst));
        expect(sha(await restoreBytes(f.store, f.work, '3')), failing).toBe(sha(await readFile(f.source)));
      }
    });

    it('spooled segments are renumbered when a failed shipment that could not be spooled landed after all, and keep their numbers across a restart', async () => {
      const f = await makeFixture(kind);
      const spoolDir = join(f.work, 'spool');
      let down = false;
      let rewriteDuringPut = true;
      let lostReplies = 1;
      let failPacks = 0;
      let volume: ProtectedVolume;
      const store = new FaultStore(f.store, {
        beforePut: async (key) => {
          if (down && !key.startsWith('locks/')) throw new Error('connect ECONNREFUSED (injected)');
          if (failPacks > 0 && key.startsWith('packs/')) {
            failPacks--;
            throw new Error('connect ECONNREFUSED (injected)');
          }
          if (rewriteDuringPut && key.startsWith('deltas/')) {
            // Region 1 is read and packed: rewritten now, its content at the seal is gone.
            rewriteDuringPut = false;
            await volume.write(1 * REGION, Buffer.alloc(REGION, 0xb2), false);
          }
        },
        afterPut: (key) => {
          if (lostReplies > 0 && key.startsWith('deltas/')) {
            lostReplies--;
            throw new Error('socket hang up after the store took the delta (injected)');
          }
        },
      });
      // No pre-image memory: a failed shipment whose region was rewritten cannot keep its point.
      volume = await ProtectedVolume.open({ store, source: f.source, drl: f.drl, spoolDir, preimageBytes: 0 });
      await volume.write(1 * REGION, Buffer.alloc(REGION, 0xa1), false);
      expect(await volume.sealAndShip()).toBeUndefined(); // delta 2 landed, reported failed; not spooled (rewritten)
      expect(volume.status().spooledPoints).toBe(0);
      down = true;
      await volume.write(2 * REGION, Buffer.alloc(REGION, 0xc3), false);
      expect(await volume.sealAndShip()).toBeUndefined(); // spooled, expecting to become point 2
      down = false;
      failPacks = 1;
      expect(await volume.sealAndShip()).toBeUndefined(); // the chain is at 2: renumbered to 3, then its pack fails
      expect(volume.status()).toMatchObject({ seq: 2, spooledPoints: 1 });
      // The process dies here; protect starts again on the same spool.
      const logs: string[] = [];
      const again = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, spoolDir, forceUnlock: true, log: (l) => logs.push(l) });
      expect(again.status().spooledPoints, logs.join('\n')).toBe(1);
      expect(await again.sealAndShip()).toEqual({ seq: 4, regions: 2 }); // 3 from the spool, then the DRL's regions
      await again.close();
      expect((await log({ store: f.store })).entries.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
      expect(sha(await restoreBytes(f.store, f.work, '3'))).toBe(sha(await readFile(f.source)));
      await forceUnlock(f.store);
    });

    it('a store that hangs: the shipment times out, and the next one goes on from the chain as it is', async () => {
      const f = await makeFixture(kind);
      let hang = true;
      const hanging = new FaultStore(f.store, {
        // Never answers, until the caller gives up (as an S3 client does on its abort signal).
        beforePut: async (key, _body, options) => {
          if (!hang || key.startsWith('locks/') || key.startsWith('status/')) return;
          await new Promise<void>((_resolve, reject) => {
            const signal = options?.signal;
            if (signal === undefined) return;
            signal.addEventListener('abort', () => reject(new Error(`${key}: aborted (timeout)`)), { once: true });
          });
        },
      });
      const volume = await ProtectedVolume.open({ store: hanging, source: f.source, drl: f.drl, shipTimeoutMs: 300 });
      await volume.write(2 * REGION, Buffer.alloc(10, 2), false);
      expect(await volume.sealAndShip()).toBeUndefined(); // timed out
      expect(volume.status().lastShipError).toMatch(/abort|cancel|timeout/i);
      hang = false;
      expect(await volume.sealAndShip()).toEqual({ seq: 2, regions: 1 });
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });

    it('a failed scan does not break shipping (or crash the process)', async () => {
      const f = await makeFixture(kind);
      const volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl });
      await volume.write(2 * REGION, Buffer.alloc(10, 2), false);
      const failing = volume.exclusive(async () => {
        throw new Error('injected scan failure');
      });
      const shipping = volume.sealAndShip(); // queued behind the failing scan
      await expect(failing).rejects.toThrow(/injected scan failure/);
      await shipping; // settles (the scan had shipped the pending write first)
      expect(volume.status().seq).toBe(2);
      await volume.write(3 * REGION, Buffer.alloc(10, 3), false);
      expect(await volume.sealAndShip()).toEqual({ seq: 3, regions: 1 });
      await volume.close();
    });

    it('after a crash, the regions left in the DRL are shipped with the first seal', async () => {
      const f = await makeFixture(kind);
      const first = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl });
      await first.write(7 * REGION, Buffer.alloc(REGION, 0x77), true); // acknowledged durable (FUA)
      await first.write(9 * REGION, Buffer.alloc(10, 0x99), false);
      await first.flush();
      // The process dies here: nothing shipped, the lock left behind (released by --force-unlock).
      const repo = await Repository.open(f.store);
      const drl = await DirtyRegionLog.open(f.drl, { volumeId: repo.config.volumeId, regionCount: REGIONS, regionSize: REGION });
      expect(Array.from(drl.dirty())).toEqual([7, 9]); // durable before the writes were acknowledged
      await drl.close();
      const again = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, forceUnlock: true });
      expect(again.status().drlRegions).toBe(2);
      expect(await again.sealAndShip()).toEqual({ seq: 2, regions: 2 });
      await again.close();
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
      await forceUnlock(f.store);
    });

    it('an integrity scan inside protect uses live host-change tracking and keeps shipping afterwards', async () => {
      const f = await makeFixture(kind);
      const volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl });
      await volume.write(4 * REGION, Buffer.alloc(10, 4), false); // pending: shipped before the scan, at one instant (claim 3)
      const { open } = await import('node:fs/promises');
      const file = await open(f.source, 'r+');
      await file.write(Buffer.alloc(10, 0xee), 0, 10, 12 * REGION); // behind cdp-s3's back
      await file.close();
      const result = await volume.exclusive((lock) => scan({ store: f.store, source: f.source, changes: volume, heldLock: lock, workers: 2 }));
      expect(result.presentSeq).toBeUndefined(); // protect sealed it itself, with pre-images
      expect(result.scanStartSeq).toBe(2);
      expect(result.discrepantRegions).toEqual([12]);
      expect(result.fixupSeq).toBe(3);
      expect(volume.status()).toMatchObject({ seq: 3, drlRegions: 0, unshippedRegions: 0 });
      await volume.write(6 * REGION, Buffer.alloc(10, 6), false);
      expect(await volume.sealAndShip()).toEqual({ seq: 4, regions: 1 });
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });
  });
}
