// Block-level deltas under protect: a region whose writes touched only some blocks ships as a
// patch of those blocks on its previous version. Random writes are applied to the volume and to
// a model of it alike; every point in time must restore to the model's image at its seal.

import { open, readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { log } from '../../src/core/log.js';
import { ProtectedVolume } from '../../src/core/protect.js';
import { scan } from '../../src/core/scan.js';
import { verify } from '../../src/core/verify.js';
import { Repository } from '../../src/repo/repository.js';
import { forceUnlock } from '../../src/repo/lock.js';
import { FRAME_HEADER_BYTES } from '../../src/repo/pieces.js';
import { patchLength } from '../../src/model/patches.js';
import { REGION, REGIONS, sha, useProtectFixture } from '../helpers/protect-fixture.js';
import { loadDelta } from '../helpers/pit.js';
import { FaultStore } from '../helpers/fault-store.js';
import { waitUntil } from '../helpers/wait.js';
import { seededRandom } from '../helpers/random.js';

const { make: makeFixture, restoreBytes } = useProtectFixture('protectpatches');
const BLOCK = 4096;
const BLOCKS = REGION / BLOCK;

/** The bytes a patch of the first `blocks` blocks of a whole region takes, stored (uncompressed, in its frame). */
const patchBytes = (blocks: number): number => {
  const bitmap = new Uint8Array(BLOCKS / 8);
  for (let block = 0; block < blocks; block++) bitmap[block >> 3]! |= 1 << (block & 7);
  return FRAME_HEADER_BYTES + patchLength(bitmap, REGION, BLOCK);
};
/** A whole region, stored (uncompressed, in its frame). */
const WHOLE = FRAME_HEADER_BYTES + REGION;

for (const kind of ['fs', 's3'] as const) {
  describe(`block-level deltas under protect (${kind} store)`, () => {
    it('random writes: every point restores to the model at its seal, across the chain bound; verify is clean; scan finds nothing', async () => {
      const f = await makeFixture(kind);
      const model = Buffer.from(await readFile(f.source));
      // A short chain bound, so regions cross it often: at most 3 patches, or half a region.
      const volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, patchLimits: { maxPatches: 3, maxPatchFraction: 0.5 } });
      const random = seededRandom(kind === 'fs' ? 11 : 12);
      const int = (n: number): number => Math.floor(random() * n);
      const expected = new Map<number, string>([[1, sha(model)]]);
      // Over a thousand random writes on the local store, a few hundred on s3rver.
      const seals = kind === 'fs' ? 60 : 20;
      for (let round = 0; round < seals; round++) {
        for (let n = 1 + int(kind === 'fs' ? 40 : 20); n > 0; n--) {
          const what = random();
          // Block and region boundaries: aligned blocks, odd bytes, and writes spanning regions.
          const offset = what < 0.5 ? int(REGIONS * BLOCKS) * BLOCK : int(REGIONS * REGION - 1);
          const length = Math.min(REGIONS * REGION - offset, what < 0.5 ? BLOCK * (1 + int(3)) : 1 + int(what < 0.9 ? 3 * BLOCK : 2 * REGION));
          if (what < 0.85) {
            const bytes = Buffer.alloc(length);
            for (let i = 0; i < length; i += 512) bytes.fill(int(256), i, Math.min(length, i + 512));
            await volume.write(offset, bytes, false);
            bytes.copy(model, offset);
          } else if (what < 0.93) {
            await volume.writeZeroes(offset, length, false);
            model.fill(0, offset, offset + length);
          } else {
            await volume.trim(offset, length, false);
            model.fill(0, offset, offset + length);
          }
        }
        // Now and then a region gets the content of another in the same interval (a composed region deduplicated).
        if (round % 7 === 3) {
          const from = int(REGIONS);
          const to = (from + 1 + int(REGIONS - 1)) % REGIONS;
          const bytes = Buffer.from(model.subarray(from * REGION, (from + 1) * REGION));
          await volume.write(to * REGION, bytes, false);
          bytes.copy(model, to * REGION);
        }
        const shipped = await volume.sealAndShip();
        expect(shipped).toBeDefined();
        expected.set(shipped!.seq, sha(model));
      }
      await volume.close();
      expect(sha(await readFile(f.source))).toBe(sha(model));
      const repo = await Repository.open(f.store);
      let patched = 0;
      let deepest = 0;
      for (const seq of expected.keys()) {
        for (const stored of (await loadDelta(repo, seq)).locations.values()) {
          if (stored === undefined || stored.patches.length === 0) continue;
          patched++;
          deepest = Math.max(deepest, stored.patches.length);
        }
      }
      expect(patched).toBeGreaterThan(20); // the test exercises patches…
      expect(deepest).toBe(3); // …up to the bound, which it never passes
      for (const [seq, image] of expected) expect(sha(await restoreBytes(f.store, f.work, String(seq))), `point ${seq}`).toBe(image);
      const verified = await verify({ store: f.store, readData: true, workers: 2, dryRun: true });
      expect(verified.problems).toEqual([]);
      expect(verified.locationsRead).toBe(verified.locations);
      // The primary matches the newest point: no false discrepancy from composed regions.
      const scanned = await scan({ store: f.store, source: f.source, dryRun: true, workers: 2 });
      expect(scanned.discrepancies).toBe(0);
    });

    it('uploads follow the bytes written: a block written in each region ships as that block', async () => {
      const f = await makeFixture(kind);
      const volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl });
      for (let region = 0; region < REGIONS; region += 2) await volume.write(region * REGION + 5 * BLOCK + 10, Buffer.alloc(100, region + 1), false);
      expect(await volume.sealAndShip()).toEqual({ seq: 2, regions: REGIONS / 2 });
      for (let region = 1; region < REGIONS; region += 4) await volume.write(region * REGION, Buffer.alloc(2 * BLOCK, 0xee), false);
      await volume.write(0, Buffer.alloc(REGION, 0x77), false); // a whole region: stored whole
      expect(await volume.sealAndShip()).toEqual({ seq: 3, regions: REGIONS / 4 + 1 });
      // From the last 2 blocks of region 3 to the first 3 of region 7 (neither patched so far): its
      // ends as patches, 4 to 6 whole.
      const span = Buffer.alloc(3 * REGION + 5 * BLOCK);
      for (let i = 0; i < span.length; i++) span[i] = i % 251; // no two regions alike: none deduplicated
      await volume.write(4 * REGION - 2 * BLOCK, span, false);
      expect(await volume.sealAndShip()).toEqual({ seq: 4, regions: 5 });
      await volume.close();
      const entries = (await log({ store: f.store })).entries;
      expect(entries[1]!.bytes).toBe((REGIONS / 2) * patchBytes(1));
      expect(entries[2]!.bytes).toBe((REGIONS / 4) * patchBytes(2) + WHOLE);
      expect(entries[3]!.bytes).toBe(patchBytes(2) + 3 * WHOLE + patchBytes(3));
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });

    it('a chain at its bound is replaced by one patch of every block changed since the base; after a restart (chain unknown) the region ships whole', async () => {
      const f = await makeFixture(kind);
      const limits = { maxPatches: 3, maxPatchFraction: 0.5 };
      const images: Buffer[] = [];
      let volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, patchLimits: limits });
      // A hot page: blocks 2 and 7 of region 4 written again and again, one of them per interval.
      for (let i = 0; i < 6; i++) {
        await volume.write(4 * REGION + (i % 2 === 0 ? 2 : 7) * BLOCK, Buffer.alloc(BLOCK, 0x10 + i), false);
        await volume.sealAndShip();
        images.push(await readFile(f.source));
      }
      await volume.close();
      volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, patchLimits: limits });
      await volume.write(4 * REGION + 2 * BLOCK, Buffer.alloc(BLOCK, 0x30), false);
      await volume.sealAndShip(); // the chain is at its bound, and this process did not make it: whole
      images.push(await readFile(f.source));
      await volume.write(4 * REGION + 7 * BLOCK, Buffer.alloc(BLOCK, 0x31), false);
      await volume.sealAndShip(); // a patch on the new base
      images.push(await readFile(f.source));
      await volume.close();
      const repo = await Repository.open(f.store);
      const chains: Array<[number, number]> = [];
      for (let seq = 2; seq <= 9; seq++) {
        const stored = (await loadDelta(repo, seq)).locations.get(4)!;
        chains.push([stored.patches.length, stored.patches.reduce((n, p) => n + p.length, 0)]);
      }
      // 1, 2, 3 patches of a block; then one patch of blocks 2 and 7 (the merge); 2, 3; after the
      // restart the bound with no history: whole (0 patches); then a patch on the new base.
      expect(chains.map(([n]) => n)).toEqual([1, 2, 3, 1, 2, 3, 0, 1]);
      expect(chains[3]![1]).toBe(patchBytes(2));
      const log8 = (await log({ store: f.store })).entries.map((e) => e.bytes);
      expect(log8.slice(1, 7).every((bytes) => bytes < 3 * BLOCK)).toBe(true); // never a whole region before the restart
      for (const [i, image] of images.entries()) expect(sha(await restoreBytes(f.store, f.work, String(i + 2))), `point ${i + 2}`).toBe(sha(image));
    });

    it('an interval sealed into the spool while a shipment is still trying ships as patches too', async () => {
      const f = await makeFixture(kind);
      let hold = true;
      let held!: () => void;
      const holding = new Promise<void>((resolve) => (held = resolve));
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      const slow = new FaultStore(f.store, {
        beforePut: async (key) => {
          if (!hold || !key.startsWith('packs/')) return;
          hold = false;
          held();
          await released; // the first shipment's pack is held
        },
      });
      const volume = await ProtectedVolume.open({ store: slow, source: f.source, drl: f.drl });
      await volume.write(8 * REGION + 3 * BLOCK, Buffer.alloc(100, 0x81), false);
      const first = volume.sealAndShip();
      await holding;
      const atFirst = await readFile(f.source);
      await volume.write(9 * REGION + 4 * BLOCK, Buffer.alloc(100, 0x91), false);
      await volume.write(8 * REGION + 6 * BLOCK, Buffer.alloc(100, 0x82), false);
      const second = volume.sealAndShip(); // the first is still trying: this one goes to the spool
      await waitUntil(() => volume.status().spooledPoints === 1, 'the second point spooled');
      release();
      await first;
      expect(await second).toEqual({ seq: 3, regions: 2 });
      await volume.close();
      const delta = await loadDelta(await Repository.open(f.store), 3);
      expect(delta.locations.get(8)!.patches).toHaveLength(2); // on top of point 2's patch
      expect(delta.locations.get(9)!.patches).toHaveLength(1);
      expect(sha(await restoreBytes(f.store, f.work, '2'))).toBe(sha(atFirst));
      expect(sha(await restoreBytes(f.store, f.work, '3'))).toBe(sha(await readFile(f.source)));
    });

    it('after a restart on the DRL, regions written before it ship whole; later ones as patches', async () => {
      const f = await makeFixture(kind);
      const first = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl });
      await first.write(3 * REGION + 100, Buffer.alloc(10, 0xab), false);
      await first.flush();
      // The process dies here: the write is in the DRL only (the lock is left behind).
      const second = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, forceUnlock: true });
      await second.write(7 * REGION + 100, Buffer.alloc(10, 0xcd), false);
      expect(await second.sealAndShip()).toEqual({ seq: 2, regions: 2 });
      await second.close();
      const delta = await loadDelta(await Repository.open(f.store), 2);
      expect(delta.locations.get(3)!.patches).toEqual([]); // which blocks changed before the restart is unknown
      expect(delta.locations.get(7)!.patches).toHaveLength(1);
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
      await forceUnlock(f.store);
    });

    it("a crash after a patch's pack is stored and before its delta: after the restart on the DRL the region ships whole, every point restores", async () => {
      const f = await makeFixture(kind);
      let crashing = false;
      let packStored!: () => void;
      const packed = new Promise<void>((resolve) => (packStored = resolve));
      const dying = new FaultStore(f.store, {
        afterPut: (key) => {
          if (crashing && key.startsWith('packs/')) packStored();
        },
        beforePut: async (key) => {
          if (crashing && key.startsWith('deltas/')) await new Promise<void>(() => {}); // the process dies before the delta
        },
      });
      const first = await ProtectedVolume.open({ store: dying, source: f.source, drl: f.drl });
      await first.write(6 * REGION + 5 * BLOCK, Buffer.alloc(100, 0x66), false);
      crashing = true;
      void first.sealAndShip();
      await packed; // the patch is stored; its delta never will be
      // The process dies here: nothing closed, its lock left behind.
      const second = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl, forceUnlock: true });
      expect(await second.sealAndShip()).toEqual({ seq: 2, regions: 1 });
      await second.close();
      expect((await loadDelta(await Repository.open(f.store), 2)).locations.get(6)!.patches).toEqual([]);
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
      expect((await verify({ store: f.store, readData: true, workers: 2, dryRun: true })).problems).toEqual([]);
      await forceUnlock(f.store);
    });

    it("a change behind protect's back: the composed region fails its digest, restore refuses it, verify --read-data names it, and the next scan stores it whole", async () => {
      const f = await makeFixture(kind);
      const volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl });
      await volume.write(9 * REGION + 2 * BLOCK, Buffer.alloc(100, 0x21), false);
      expect(await volume.sealAndShip()).toEqual({ seq: 2, regions: 1 });
      const file = await open(f.source, 'r+');
      await file.write(Buffer.alloc(10, 0xee), 0, 10, 9 * REGION + 12 * BLOCK); // not through protect
      await file.close();
      await volume.write(9 * REGION + 3 * BLOCK, Buffer.alloc(100, 0x31), false);
      expect(await volume.sealAndShip()).toEqual({ seq: 3, regions: 1 });
      await volume.close();
      await expect(restoreBytes(f.store, f.work, '3')).rejects.toThrow(/region 9 composed of its base and 2 patches/);
      const found = await verify({ store: f.store, readData: true, workers: 2 });
      expect(found.compositions).toBe(1);
      expect(found.problems).toEqual([expect.objectContaining({ object: 'region', detail: expect.stringMatching(/region 9 does not compose to its SHA-256/), affects: [3] })]);
      expect(found.damaged).toEqual([3]);
      const scanned = await scan({ store: f.store, source: f.source, workers: 2 });
      expect(scanned.repaired).toBe(1);
      const repaired = (await loadDelta(await Repository.open(f.store), scanned.fixupSeq!)).locations.get(9)!;
      expect(repaired.patches).toEqual([]);
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });

    it('a region a scan inside protect finds different, which the host writes during the scan, ships whole next (not as a patch on the stale version)', async () => {
      const f = await makeFixture(kind);
      const volume = await ProtectedVolume.open({ store: f.store, source: f.source, drl: f.drl });
      const file = await open(f.source, 'r+');
      await file.write(Buffer.alloc(10, 0xee), 0, 10, 12 * REGION + 8 * BLOCK); // behind cdp-s3's back
      await file.close();
      const result = await volume.exclusive((lock) =>
        scan({
          store: f.store,
          source: f.source,
          changes: volume,
          heldLock: lock,
          workers: 2,
          // The host writes another block of region 12 during the scan: the scan leaves it to the next point (claims 7, 8).
          hooks: { afterScanRead: async (region) => (region === 12 ? volume.write(12 * REGION + 2 * BLOCK, Buffer.alloc(10, 0x12), false) : undefined) },
        }),
      );
      expect(result.discrepancies).toBe(1);
      expect(result.repaired).toBe(0);
      expect(await volume.sealAndShip()).toEqual({ seq: 2, regions: 1 });
      await volume.close();
      expect((await loadDelta(await Repository.open(f.store), 2)).locations.get(12)!.patches).toEqual([]);
      expect(sha(await restoreBytes(f.store, f.work, 'latest'))).toBe(sha(await readFile(f.source)));
    });

    it('a write in flight at the seal that lands before the region is read: its blocks are in the patch', async () => {
      const f = await makeFixture(kind);
      let holdWrite = false;
      let writeHeld!: () => void;
      const writeReached = new Promise<void>((resolve) => (writeHeld = resolve));
      let releaseWrite!: () => void;
      const writeReleased = new Promise<void>((resolve) => (releaseWrite = resolve));
      let readHeld!: () => void;
      const readReached = new Promise<void>((resolve) => (readHeld = resolve));
      let releaseRead!: () => void;
      const readReleased = new Promise<void>((resolve) => (releaseRead = resolve));
      const volume = await ProtectedVolume.open({
        store: f.store,
        source: f.source,
        drl: f.drl,
        hooks: {
          beforeWriteApplies: async () => {
            if (!holdWrite) return;
            holdWrite = false;
            writeHeld();
            await writeReleased;
          },
          beforeShipRead: async (region) => {
            if (region !== 4) return;
            readHeld();
            await readReleased;
          },
        },
      });
      await volume.write(4 * REGION, Buffer.alloc(100, 0x11), false); // block 0: in the open map
      holdWrite = true;
      const inFlight = volume.write(4 * REGION + 9 * BLOCK, Buffer.alloc(100, 0x22), false); // block 9, held before it lands
      await writeReached;
      const shipping = volume.sealAndShip(); // seals with the second write in flight
      await readReached; // the shipper is about to read region 4
      releaseWrite();
      await inFlight; // the second write has landed: the shipper reads both blocks
      releaseRead();
      expect(await shipping).toEqual({ seq: 2, regions: 1 });
      expect((await loadDelta(await Repository.open(f.store), 2)).locations.get(4)!.patches[0]!.length).toBe(patchBytes(2));
      expect(sha(await restoreBytes(f.store, f.work, '2'))).toBe(sha(await readFile(f.source)));
      await volume.close();
    });
  });
}
