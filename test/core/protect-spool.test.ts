// The outage spool of protect: its directory holds only its own segments (and nothing else in it
// is touched), and during an outage every interval is kept as its own point in time.

import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { log } from '../../src/core/log.js';
import { ProtectedVolume } from '../../src/core/protect.js';
import { forceUnlock } from '../../src/repo/lock.js';
import { Repository } from '../../src/repo/repository.js';
import { DirtyRegionLog } from '../../src/volume/dirty-region-log.js';
import { FaultStore } from '../helpers/fault-store.js';
import { waitUntil } from '../helpers/wait.js';
import { REGION, REGIONS, sha, useProtectFixture } from '../helpers/protect-fixture.js';

const { fixture, make: makeFixture, restoreBytes } = useProtectFixture('protectspool');

/** A promise with its resolve function, for events the test waits on. */
function signal(): { promise: Promise<void>; fire: () => void } {
  let fire!: () => void;
  const promise = new Promise<void>((resolve) => (fire = resolve));
  return { promise, fire };
}

describe('the spool directory is the spool\'s own', () => {
  it('a --spool-dir that holds the DRL is refused before anything is touched; the DRL keeps its regions', async () => {
    const f = await makeFixture('fs');
    const dir = join(f.work, 'state');
    await mkdir(dir);
    const drl = join(dir, 'disk.drl');
    const first = await ProtectedVolume.open({ store: f.store, source: f.source, drl, spoolDir: join(f.work, 'spool') });
    await first.write(7 * REGION, Buffer.alloc(REGION, 0x77), true); // acknowledged, not shipped
    // The process dies here; it is started again with the spool pointed at the DRL's directory.
    await forceUnlock(f.store);
    await expect(ProtectedVolume.open({ store: f.store, source: f.source, drl, spoolDir: dir, forceUnlock: true })).rejects.toThrow(
      /spool directory .*state also holds the dirty region log .*disk\.drl: give --spool-dir a directory of its own/,
    );
    expect(await readdir(dir)).toEqual(['disk.drl']);
    const repo = await Repository.open(f.store);
    const log = await DirtyRegionLog.open(drl, { volumeId: repo.config.volumeId, regionCount: REGIONS, regionSize: REGION });
    expect(Array.from(log.dirty())).toEqual([7]);
    await log.close();
    await forceUnlock(f.store);
  });

  it('a --spool-dir holding other files, or the spool of another volume, is refused and left as it was', async () => {
    const f = await makeFixture('fs');
    const dir = join(f.work, 'shared');
    await mkdir(join(dir, 'sub'), { recursive: true });
    await writeFile(join(dir, 'notes.txt'), 'mine');
    await expect(ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, spoolDir: dir })).rejects.toMatchObject({
      code: 'INVALID_ARGUMENT',
      message: expect.stringMatching(/holds files that are not spool segments \(notes\.txt, sub\): give --spool-dir a directory of its own/),
    });
    expect((await readdir(dir)).sort()).toEqual(['notes.txt', 'sub']);
    expect(await readFile(join(dir, 'notes.txt'), 'utf8')).toBe('mine');

    // Another volume's protect spooled a point in time into `other` during an outage.
    const g = await makeFixture('fs');
    const other = join(f.work, 'other');
    const down = new FaultStore(g.store, {
      beforePut: (key) => {
        if (!key.startsWith('locks/')) throw new Error('connect ECONNREFUSED (injected)');
      },
    });
    const theirs = await ProtectedVolume.open({ store: down, source: g.source, drl: g.drl, spoolDir: other });
    await theirs.write(1 * REGION, Buffer.alloc(REGION, 1), false);
    await theirs.sealAndShip(); // fails: the outage begins
    await theirs.write(2 * REGION, Buffer.alloc(REGION, 2), false);
    await theirs.sealAndShip(); // kept in their spool
    const before = (await readdir(other)).sort();
    expect(before.length).toBeGreaterThan(0);
    await expect(ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, spoolDir: other })).rejects.toThrow(
      /spool directory .*other holds the spool of volume .*: give --spool-dir a directory of its own/,
    );
    expect((await readdir(other)).sort()).toEqual(before);
    await theirs.close();
    await forceUnlock(g.store);
  });
});

for (const kind of ['fs', 's3'] as const) {
  describe(`an outage (${kind} store)`, () => {
    it('every interval is spooled at its own tick while a drain attempt is still failing, and each ships as its own point in time', async () => {
      const f = await makeFixture(kind);
      const base = Date.parse((await log({ store: f.store })).entries[0]!.time);
      let now = base + 60_000;
      let down = true;
      let slow = false; // failures take until `failNow` (a store that times out)
      let failNow!: () => void;
      const failing = new Promise<void>((resolve) => (failNow = resolve));
      let putHeld!: () => void;
      const held = new Promise<void>((resolve) => (putHeld = resolve));
      const store = new FaultStore(f.store, {
        beforePut: async (key) => {
          if (!down || key.startsWith('locks/')) return;
          if (slow) {
            putHeld();
            await failing;
          }
          throw new Error('connect ETIMEDOUT (injected)');
        },
      });
      const spooled: string[] = [];
      let onSpooled: (() => void) | undefined;
      const volume = await ProtectedVolume.open({
        store,
        source: f.source,
        drl: f.drl,
        clock: () => now,
        log: (line) => {
          if (/in the local spool/.test(line)) {
            spooled.push(line);
            onSpooled?.();
          }
        },
      });
      const whenSpooled = (n: number): Promise<void> =>
        new Promise((resolve) => {
          onSpooled = () => spooled.length >= n && resolve();
          onSpooled();
        });
      const atTick: Buffer[] = [];
      const ticks: Array<Promise<unknown>> = [];
      // Tick 1: the shipment fails at once; its point in time waits in the spool.
      await volume.write(1 * REGION, Buffer.alloc(REGION, 0x11), false);
      atTick.push(await readFile(f.source));
      expect(await volume.sealAndShip()).toBeUndefined();
      await whenSpooled(1);
      slow = true;
      for (let tick = 2; tick <= 5; tick++) {
        now += 1000;
        await volume.write(tick * REGION, Buffer.alloc(REGION, tick * 0x11), false);
        await volume.write(1 * REGION, Buffer.alloc(100, tick), false);
        atTick.push(await readFile(f.source));
        ticks.push(volume.sealAndShip()); // tick 2 starts a drain, whose first put hangs
        await whenSpooled(tick); // later ticks are spooled while it hangs
        if (tick === 2) await held;
      }
      expect(volume.status()).toMatchObject({ spooledPoints: 5, unshippedRegions: 5 });
      failNow();
      expect(await Promise.all(ticks)).toEqual([undefined, undefined, undefined, undefined]);
      down = false;
      now += 1000;
      expect(await volume.sealAndShip()).toEqual({ seq: 6, regions: 2 }); // nothing new: the spool drains
      await volume.close();
      const entries = (await log({ store: f.store })).entries;
      expect(entries.map((e) => e.seq)).toEqual([1, 2, 3, 4, 5, 6]);
      expect(entries.slice(1).map((e) => Date.parse(e.time) - base)).toEqual([60_000, 61_000, 62_000, 63_000, 64_000]);
      for (let i = 0; i < atTick.length; i++) expect(sha(await restoreBytes(f.store, f.work, String(i + 2))), `point ${i + 2}`).toBe(sha(atTick[i]!));
    });

    for (const outcome of ['fails', 'fails, then a restart', 'commits'] as const) {
      it(`a direct shipment still trying across three ticks: each tick's point waits in the spool at once; the shipment ${outcome}: four points in time, each bit-exact at its seal`, async () => {
        const f = await makeFixture(kind);
        const spoolDir = join(f.work, 'spool');
        let now = Date.now();
        let down = false;
        const store = new FaultStore(f.store, {
          beforePut: (key) => {
            if (down && !key.startsWith('locks/')) throw new Error('connect ETIMEDOUT (injected)');
          },
        });
        const shipperHeld = signal();
        const releaseShipper = signal();
        const segmentHeld = signal();
        const releaseSegment = signal();
        let phase: 'direct' | 'spool' = 'direct';
        let holdSegment = false;
        const spooled: string[] = [];
        let onSpooled = (): void => {};
        const whenSpooled = (n: number): Promise<void> =>
          new Promise((resolve) => {
            onSpooled = () => void (spooled.length >= n && resolve());
            onSpooled();
          });
        const volume = await ProtectedVolume.open({
          store,
          source: f.source,
          drl: f.drl,
          spoolDir,
          clock: () => now,
          log: (line) => {
            if (/in the local spool/.test(line)) spooled.push(line);
            onSpooled();
          },
          hooks: {
            beforeShipRead: async (region) => {
              if (region !== 3) return;
              if (phase === 'direct') {
                // The direct shipment has read regions 1 and 2; it is held before region 3.
                phase = 'spool';
                shipperHeld.fire();
                await releaseShipper.promise;
              } else if (holdSegment) {
                holdSegment = false;
                segmentHeld.fire();
                await releaseSegment.promise;
              }
            },
          },
        });
        const atSeal: Buffer[] = [];
        // Tick 1: regions 1-3 ship directly; the shipment is held before it reads region 3.
        await volume.write(1 * REGION, Buffer.alloc(3 * REGION, 0x11), false);
        atSeal.push(await readFile(f.source));
        const first = volume.sealAndShip();
        await shipperHeld.promise;
        // Region 1 (read by the shipment) and region 3 (not read yet) are written again: both keep their content at seal 1.
        now += 1000;
        await volume.write(1 * REGION, Buffer.alloc(100, 0x21), false);
        await volume.write(3 * REGION, Buffer.alloc(100, 0x23), false);
        await volume.write(4 * REGION, Buffer.alloc(REGION, 0x24), false);
        atSeal.push(await readFile(f.source));
        const ticks = [volume.sealAndShip()]; // tick 2: regions 1, 3, 4 go to the spool at once
        await whenSpooled(1);
        now += 1000;
        await volume.write(3 * REGION + 200, Buffer.alloc(100, 0x33), false);
        await volume.write(5 * REGION, Buffer.alloc(REGION, 0x35), false);
        atSeal.push(await readFile(f.source));
        holdSegment = true;
        ticks.push(volume.sealAndShip()); // tick 3: regions 3, 5; its segment is held before region 3
        await segmentHeld.promise;
        // Region 3 is sealed and unread in the direct shipment and in tick 3's seal: each keeps its own content.
        await volume.write(3 * REGION + 300, Buffer.alloc(100, 0x43), false);
        releaseSegment.fire();
        await whenSpooled(2);
        now += 1000;
        await volume.write(6 * REGION, Buffer.alloc(REGION, 0x46), false);
        atSeal.push(await readFile(f.source));
        ticks.push(volume.sealAndShip()); // tick 4: regions 3, 6
        await whenSpooled(3);
        expect(volume.status()).toMatchObject({ seq: 1, spooledPoints: 3, unshippedRegions: 6 });
        down = outcome !== 'commits';
        releaseShipper.fire();
        if (outcome === 'commits') {
          // It commits as point 2; the spooled points drain after it, in order, as 3, 4 and 5.
          expect(await Promise.all([first, ...ticks])).toEqual(Array(4).fill({ seq: 5, regions: 2 }));
          expect(volume.status()).toMatchObject({ preimageBytes: 0, spooledPoints: 0, unshippedRegions: 0, drlRegions: 0 });
          await volume.close();
        } else {
          expect(await first).toBeUndefined(); // its point goes to the spool, ahead of the three
          expect(await Promise.all(ticks)).toEqual([undefined, undefined, undefined]);
          expect(spooled).toHaveLength(4);
          expect(volume.status()).toMatchObject({ seq: 1, spooledPoints: 4, preimageBytes: 0 });
          down = false;
          if (outcome === 'fails') {
            expect(await volume.sealAndShip()).toEqual({ seq: 5, regions: 2 });
            await volume.close();
          } else {
            // The process dies here; protect starts again on the same spool: the order on disk holds.
            const logs: string[] = [];
            const again = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, spoolDir, forceUnlock: true, log: (l) => logs.push(l) });
            expect(logs.some((l) => /4 points in time from before the restart/.test(l)), logs.join('\n')).toBe(true);
            expect(await again.sealAndShip()).toEqual({ seq: 6, regions: 6 }); // 2-5 from the spool, then the DRL's regions
            await again.close();
            await forceUnlock(f.store);
          }
        }
        const entries = (await log({ store: f.store })).entries;
        expect(entries.map((e) => e.seq).slice(0, 5)).toEqual([1, 2, 3, 4, 5]);
        for (let i = 0; i < atSeal.length; i++) expect(sha(await restoreBytes(f.store, f.work, String(i + 2))), `point ${i + 2}`).toBe(sha(atSeal[i]!));
        expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
      });
    }

    it('a failed shipment whose point cannot be kept (no pre-image memory for a region it read) takes the points spooled meanwhile with it: all their writes go out with the next seal', async () => {
      const f = await makeFixture(kind);
      const spoolDir = join(f.work, 'spool');
      let down = false;
      const packReached = signal();
      const releasePack = signal();
      let holdPack = true;
      const store = new FaultStore(f.store, {
        beforePut: async (key) => {
          if (holdPack && key.startsWith('packs/')) {
            holdPack = false;
            packReached.fire();
            await releasePack.promise;
          }
          if (down && !key.startsWith('locks/')) throw new Error('connect ETIMEDOUT (injected)');
        },
      });
      const logs: string[] = [];
      const volume = await ProtectedVolume.open({ store, source: f.source, drl: f.drl, spoolDir, preimageBytes: 0, log: (l) => logs.push(l) });
      await volume.write(1 * REGION, Buffer.alloc(2 * REGION, 0x11), false); // regions 1, 2
      const first = volume.sealAndShip();
      await packReached.promise; // both read and packed
      await volume.write(1 * REGION, Buffer.alloc(REGION, 0x21), false); // no room to keep region 1's content at the seal
      const tick2 = volume.sealAndShip(); // spooled at once
      await volume.write(5 * REGION, Buffer.alloc(REGION, 0x25), false);
      const tick3 = volume.sealAndShip(); // spooled at once
      await waitUntil(() => logs.filter((l) => /in the local spool/.test(l)).length === 2, 'two points spooled');
      expect(volume.status().spooledPoints).toBe(2);
      down = true;
      releasePack.fire();
      expect(await Promise.all([first, tick2, tick3])).toEqual([undefined, undefined, undefined]);
      expect(logs.some((l) => /point in time of the failed shipment and the 2 sealed while it was trying could not be kept in the spool \(a region it had read was written again/.test(l)), logs.join('\n')).toBe(true);
      expect(volume.status()).toMatchObject({ spooledPoints: 0, spoolBytes: 0, unshippedRegions: 3, drlRegions: 3, preimageBytes: 0 });
      expect(await readdir(spoolDir)).toEqual([]);
      down = false;
      expect(await volume.sealAndShip()).toEqual({ seq: 2, regions: 3 }); // regions 1, 2, 5 together
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });

    it('a failed shipment\'s point goes to the spool as it was at its seal, though the host rewrites regions the shipper read while the segment is written', async () => {
      const f = await makeFixture(kind);
      let down = true;
      let failed = false;
      const store = new FaultStore(f.store, {
        beforePut: (key) => {
          if (!down || !key.startsWith('packs/')) return;
          failed = true; // the shipper has read every sealed region: the pack goes out at the end
          throw new Error('connect ECONNREFUSED (injected)');
        },
      });
      let rewrote = false;
      const volume = await ProtectedVolume.open({
        store,
        source: f.source,
        drl: f.drl,
        hooks: {
          beforeShipRead: async (region) => {
            // The segment writer is about to read region 1: the host rewrites regions 2 and 3,
            // which the failed shipment had read already.
            if (!failed || rewrote || region !== 1) return;
            rewrote = true;
            await volume.write(2 * REGION, Buffer.alloc(2 * REGION, 0xb2), false);
          },
        },
      });
      await volume.write(1 * REGION, Buffer.alloc(3 * REGION, 0xa1), false); // regions 1, 2, 3
      const atSeal = await readFile(f.source);
      expect(await volume.sealAndShip()).toBeUndefined(); // fails after reading 1-3; its point is spooled
      expect(rewrote).toBe(true);
      expect(volume.status()).toMatchObject({ spooledPoints: 1, spoolBytes: 3 * REGION });
      down = false;
      expect(await volume.sealAndShip()).toEqual({ seq: 3, regions: 2 }); // point 2 from the spool, then the rewrite
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, '2'))).toBe(sha(atSeal));
      expect(sha(await restoreBytes(f.store, f.work, '3'))).toBe(sha(await readFile(f.source)));
    });
  });
}
