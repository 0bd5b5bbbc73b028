// The pre-image memory bound of protect: past it, a write to a sealed region the shipper has not
// read yet waits for the shipper (instead of copying the pre-image), and each point in time still
// holds exactly the content at its seal; a write that waits survives a shipment that fails.

import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { ProtectedVolume } from '../../src/core/protect.js';
import { FaultStore } from '../helpers/fault-store.js';
import { REGION, sha, useProtectFixture } from '../helpers/protect-fixture.js';

const { fixture, make: makeFixture, restoreBytes } = useProtectFixture('protectpre');

/** A promise with its resolve function, for events the test waits on. */
function signal<T = void>(): { promise: Promise<T>; fire: (value: T) => void } {
  let fire!: (value: T) => void;
  const promise = new Promise<T>((resolve) => (fire = resolve));
  return { promise, fire };
}

for (const kind of ['fs', 's3'] as const) {
  describe(`protect's pre-image memory bound (${kind} store)`, () => {
    it('past the bound a write waits for the shipper to read the region; each point holds the content at its seal', async () => {
      const f = await makeFixture(kind);
      const shipperMayRead = signal();
      const waiting = signal<number>();
      const volume = await ProtectedVolume.open({
        store: f.store,
        source: f.source,
        drl: f.drl,
        preimageBytes: REGION, // room for one pre-image
        hooks: {
          // The shipper reads a few regions ahead: hold it before each of them.
          beforeShipRead: (region) => (region >= 1 && region <= 3 ? shipperMayRead.promise : undefined),
          writeWaits: (region) => waiting.fire(region),
        },
      });
      await volume.write(1 * REGION, Buffer.alloc(3 * REGION, 0xa1), false); // regions 1, 2, 3
      const atSeal = await readFile(f.source);
      const shipping = volume.sealAndShip(); // seals 1-3; the shipper stops before reading any of them
      await volume.write(1 * REGION, Buffer.alloc(REGION, 0xb2), false); // region 1's pre-image takes all the room
      expect(volume.status().preimageBytes).toBe(REGION);
      let written = false;
      const second = volume.write(2 * REGION, Buffer.alloc(2 * REGION, 0xb2), false).then(() => (written = true)); // regions 2, 3
      expect(await waiting.promise).toBe(2); // no room for region 2's pre-image: the write waits
      expect(written).toBe(false);
      expect(volume.status().preimageBytes).toBe(REGION);
      shipperMayRead.fire();
      await second; // the shipper has read regions 2 and 3: the write goes on
      expect(await shipping).toEqual({ seq: 2, regions: 3 });
      expect(volume.status().preimageBytes).toBe(0);
      expect(await volume.sealAndShip()).toEqual({ seq: 3, regions: 3 });
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, '2'))).toBe(sha(atSeal));
      expect(sha(await restoreBytes(f.store, f.work, '3'))).toBe(sha(await readFile(f.source)));
    });

    it('a write waiting for the shipper goes on when the shipment fails, and everything ships later', async () => {
      const f = await makeFixture(kind);
      let down = true;
      const flaky = new FaultStore(f.store, {
        beforePut: (key) => {
          if (down && !key.startsWith('locks/')) throw new Error('connect ECONNREFUSED (injected)');
        },
      });
      const shipperMayRead = signal();
      const waiting = signal<number>();
      let failed = false;
      const volume = await ProtectedVolume.open({
        store: flaky,
        source: f.source,
        drl: f.drl,
        preimageBytes: REGION,
        spoolBytes: 0, // no spool: a failed shipment gives its regions back to the next seal
        hooks: {
          beforeShipRead: async (region) => {
            if (region !== 2 || failed) return;
            await shipperMayRead.promise;
            failed = true;
            throw new Error('the shipment fails before it reads region 2 (injected)');
          },
          writeWaits: (region) => waiting.fire(region),
        },
      });
      await volume.write(1 * REGION, Buffer.alloc(3 * REGION, 0xa1), false); // regions 1, 2, 3
      const shipping = volume.sealAndShip();
      await volume.write(1 * REGION, Buffer.alloc(REGION, 0xb2), false); // takes the room, if the shipper has not read region 1 yet
      const second = volume.write(2 * REGION, Buffer.alloc(2 * REGION, 0xb2), false); // regions 2, 3: waits at region 2
      expect(await waiting.promise).toBe(2);
      shipperMayRead.fire();
      expect(await shipping).toBeUndefined(); // failed
      await second; // woken by the failure, and not failed by it
      expect(volume.status()).toMatchObject({ preimageBytes: 0, unshippedRegions: 3 });
      down = false;
      expect(await volume.sealAndShip()).toEqual({ seq: 2, regions: 3 });
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });
  });
}
