// protect on a repository without a base: it serves at once and takes the base while serving,
// by the scan's method with the volume as the live change source (claims 1–11). Host writes
// during the base go out in the next point in time, which holds the volume exactly at its seal.

import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { log } from '../../src/core/log.js';
import { ProtectedVolume } from '../../src/core/protect.js';
import { readTrust } from '../../src/repo/trust.js';
import { REGION, REGIONS, sha, useProtectFixture } from '../helpers/protect-fixture.js';

const { fixture, make: makeFixture, restoreBytes } = useProtectFixture('protectbase', { base: false, zero: 0.25, repeated: 0.1 });

const region = (bytes: Buffer, r: number): string => sha(bytes.subarray(r * REGION, (r + 1) * REGION));

for (const kind of ['fs', 's3'] as const) {
  describe(`protect takes the base while serving (${kind} store)`, () => {
    it('writes during the base scan and copy are tracked; the base is marked suspect, every later point is exact at its seal', async () => {
      const f = await makeFixture(kind);
      const volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl });
      expect(volume.status()).toMatchObject({ seq: 0, base: { phase: 'waiting', regionsDone: 0, regionsTotal: 0 } });
      await volume.write(4 * REGION, Buffer.alloc(REGION, 0x44), false); // served before the base
      expect(await volume.sealAndShip()).toBeUndefined(); // nothing commits before the base
      const written = new Set<number>();
      const write = async (r: number, fill: number): Promise<void> => {
        await volume.write(r * REGION + 10, Buffer.alloc(100, fill), false);
        written.add(r);
      };
      let duringScan: unknown;
      let copied = 0;
      const result = await volume.takeBase({
        hooks: {
          afterScanRead: async (r) => {
            if (r !== 10) return;
            duringScan = volume.status().base;
            await write(3, 0x33); // scanned already
            await write(20, 0x20); // not scanned yet
          },
          copyStarted: () => write(7, 0x77),
          afterCopyRead: async (r) => {
            if (copied++ === 0) await write(r, 0xcc); // copied already: written again during the copy
          },
        },
      });
      expect(duringScan).toEqual({ phase: 'scan', regionsDone: 10, regionsTotal: REGIONS });
      expect(result).toMatchObject({ fixupSeq: 1, suspect: [1], writtenDuringScan: 2 });
      const entries = (await log({ store: f.store })).entries;
      expect(entries.map((e) => [e.seq, e.kind])).toEqual([[1, 'base']]);
      expect((await readTrust(f.store)).marks.get(1)).toEqual([expect.objectContaining({ kind: 'suspect' })]);
      expect(volume.status()).toMatchObject({ seq: 1, base: undefined });
      // The base holds every region the host did not write meanwhile as it is.
      const now = await readFile(f.source);
      const inBase = await restoreBytes(f.store, f.work, '1', true);
      for (let r = 0; r < REGIONS; r++) if (!written.has(r)) expect(region(inBase, r), `region ${r}`).toBe(region(now, r));
      // The next point holds the volume exactly at its seal, the host's writes during the base included.
      expect(await volume.sealAndShip()).toMatchObject({ seq: 2 });
      expect(sha(await restoreBytes(f.store, f.work, '2'))).toBe(sha(now));
      await volume.write(9 * REGION, Buffer.alloc(REGION, 0x99), false);
      expect(await volume.sealAndShip()).toEqual({ seq: 3, regions: 1 });
      expect(volume.status()).toMatchObject({ drlRegions: 0, unshippedRegions: 0 });
      await volume.close();
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });

    it('a base nobody wrote during is one instant: trusted and exact', async () => {
      const f = await makeFixture(kind);
      let now = Date.now();
      const volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, clock: () => now });
      await volume.write(4 * REGION, Buffer.alloc(REGION, 0x44), false); // before the base: in it
      now += 5000;
      expect(volume.status().lagMs).toBe(5000);
      const result = await volume.takeBase();
      expect(result).toMatchObject({ fixupSeq: 1, suspect: [] });
      expect(volume.status()).toMatchObject({ seq: 1, base: undefined, unshippedRegions: 0, lagMs: 0 });
      expect(await volume.sealAndShip()).toBeUndefined(); // nothing left to ship
      await volume.close();
      expect((await readTrust(f.store)).marks.size).toBe(0);
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });
  });
}
