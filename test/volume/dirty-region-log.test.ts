// The dirty region log: round trips, durability across reopen, crash safety of the two-slot
// update, refusal of damaged or foreign logs, serialization of concurrent updates.

import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CdpError, FormatError, InvalidArgumentError } from '../../src/errors.js';
import { DeltaMap } from '../../src/model/delta-map.js';
import {
  DRL_BLOCK,
  DRL_HEADER_BYTES,
  DirtyRegionLog,
  type DirtyRegionLogOptions,
  inspectDirtyRegionLog,
} from '../../src/volume/dirty-region-log.js';
import { seededRandom } from '../helpers/random.js';

const VOLUME = '6f1c2a9e-0b7d-4e55-9a3c-2f4d8e1b7c60';
const OTHER_VOLUME = 'a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d';
const OPTIONS: DirtyRegionLogOptions = { volumeId: VOLUME, regionCount: 1000, regionSize: 65536 };

/** Where slot `k` starts and how long it is, for a log of `regionCount` regions. */
function slotSpan(regionCount: number, k: 0 | 1): { start: number; length: number } {
  const length = 8 + Math.ceil(regionCount / 8) + 32;
  const stride = Math.ceil(length / DRL_BLOCK) * DRL_BLOCK;
  return { start: DRL_BLOCK + k * stride, length };
}

let dir: string;
let file: string;

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-s3-drl-'));
  file = join(dir, 'volume.drl');
});

afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function refusal(promise: Promise<unknown>): Promise<CdpError> {
  try {
    await promise;
  } catch (error) {
    expect(error).toBeInstanceOf(CdpError);
    const e = error as CdpError;
    expect(e.message).not.toMatch(/\n/);
    return e;
  }
  throw new Error('the operation was not refused');
}

async function openRegions(path = file, options = OPTIONS): Promise<number[]> {
  const log = await DirtyRegionLog.open(path, options);
  try {
    return Array.from(log.dirty().regions());
  } finally {
    await log.close();
  }
}

async function flipByte(path: string, offset: number): Promise<void> {
  const bytes = await readFile(path);
  bytes[offset]! ^= 0x5a;
  await writeFile(path, bytes);
}

describe('DirtyRegionLog', () => {
  it('creates an empty log and opens it again', async () => {
    const log = await DirtyRegionLog.create(file, OPTIONS);
    expect(log.created).toBe(true);
    expect(log.count()).toBe(0);
    expect(log.dirty().isEmpty()).toBe(true);
    expect([log.volumeId, log.regionCount, log.regionSize]).toEqual([VOLUME, 1000, 65536]);
    await log.close();

    const { length: slotLength } = slotSpan(1000, 1);
    expect((await stat(file)).size).toBe(slotSpan(1000, 1).start + slotLength);
    expect(await inspectDirtyRegionLog(file)).toEqual({
      formatVersion: 1,
      volumeId: VOLUME,
      regionCount: 1000,
      regionSize: 65536,
      generations: [1, 0],
      slotProblems: [undefined, undefined],
      activeSlot: 0,
      dirtyCount: 0,
    });
    const again = await DirtyRegionLog.open(file, OPTIONS);
    expect(again.created).toBe(false);
    expect(again.count()).toBe(0);
    await again.close();
    // Nothing but the log is left in the directory (the temporary file is gone).
    expect(await readdir(dir)).toEqual(['volume.drl']);
  });

  it('handles odd and empty region counts', async () => {
    for (const regionCount of [0, 1, 13, 8, 4096 * 8 + 3]) {
      const path = join(dir, `n${regionCount}.drl`);
      const options = { ...OPTIONS, regionCount };
      const log = await DirtyRegionLog.create(path, options);
      const regions = regionCount === 0 ? [] : [0, regionCount - 1];
      await log.mark(regions);
      await log.close();
      expect(await openRegions(path, options)).toEqual([...new Set(regions)]);
    }
  });

  it('refuses to overwrite an existing file unless asked to', async () => {
    const log = await DirtyRegionLog.create(file, OPTIONS);
    await log.mark([1, 2, 3]);
    await log.close();
    const error = await refusal(DirtyRegionLog.create(file, OPTIONS));
    expect(error.code).toBe('SOURCE');
    expect(error.message).toContain(file);
    expect(error.message).toMatch(/already exists/);
    expect(await openRegions()).toEqual([1, 2, 3]);

    const fresh = await DirtyRegionLog.create(file, { ...OPTIONS, overwrite: true });
    expect(fresh.count()).toBe(0);
    await fresh.close();
    expect(await openRegions()).toEqual([]);
  });

  it('openOrCreate creates a missing log and opens an existing one', async () => {
    const log = await DirtyRegionLog.openOrCreate(file, OPTIONS);
    expect(log.created).toBe(true);
    await log.mark([7]);
    await log.close();
    const again = await DirtyRegionLog.openOrCreate(file, OPTIONS);
    expect(again.created).toBe(false);
    expect(Array.from(again.dirty())).toEqual([7]);
    await again.close();
    const error = await refusal(DirtyRegionLog.openOrCreate(file, { ...OPTIONS, volumeId: OTHER_VOLUME }));
    expect(error.code).toBe('VOLUME_MISMATCH');
  });

  it('refuses to open a missing file with a SOURCE error', async () => {
    const error = await refusal(DirtyRegionLog.open(file, OPTIONS));
    expect(error.code).toBe('SOURCE');
    expect(error.message).toBe(`cannot open dirty region log ${file}: it does not exist; check the --drl path`);
  });

  it('refuses bad options', async () => {
    await expect(DirtyRegionLog.create(file, { ...OPTIONS, volumeId: '' })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(DirtyRegionLog.create(file, { ...OPTIONS, volumeId: 'x'.repeat(65) })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(DirtyRegionLog.create(file, { ...OPTIONS, regionCount: -1 })).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(DirtyRegionLog.create(file, { ...OPTIONS, regionSize: 0 })).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('persists marks and clears across reopen', async () => {
    const log = await DirtyRegionLog.create(file, OPTIONS);
    await log.mark([5, 999, 0]);
    await log.mark(DeltaMap.of(1000, [100, 101, 5]));
    expect(log.has(100)).toBe(true);
    expect(log.has(6)).toBe(false);
    expect(log.count()).toBe(5);
    await log.close();
    expect(await openRegions()).toEqual([0, 5, 100, 101, 999]);

    const again = await DirtyRegionLog.open(file, OPTIONS);
    await again.clear(DeltaMap.of(1000, [5, 101, 500]));
    await again.clear([999]);
    await again.close();
    expect(await openRegions()).toEqual([0, 100]);
    expect((await inspectDirtyRegionLog(file)).dirtyCount).toBe(2);
  });

  it('hands out copies and snapshots its arguments', async () => {
    const log = await DirtyRegionLog.create(file, OPTIONS);
    const argument = DeltaMap.of(1000, [1]);
    const marked = log.mark(argument);
    argument.set(2); // after the call: not part of the update
    await marked;
    const copy = log.dirty();
    copy.set(3);
    expect(Array.from(log.dirty())).toEqual([1]);
    await log.close();
    expect(await openRegions()).toEqual([1]);
  });

  it('does not rewrite the file when nothing changes', async () => {
    const log = await DirtyRegionLog.create(file, OPTIONS);
    await log.mark([10, 20, 30]);
    const before = await inspectDirtyRegionLog(file);
    expect(before.generations).toEqual([1, 2]);
    const bytes = await readFile(file);
    // A modification time long past: any write, even of the same bytes, would set it to now.
    await utimes(file, 1_000_000, 1_000_000);
    const mtime = (await stat(file)).mtimeMs;
    expect(mtime).toBe(1_000_000_000);

    await log.mark([10, 30]);
    await log.mark(DeltaMap.of(1000, [20]));
    await log.mark([]);
    await log.clear([11, 12]);
    await log.clear(new DeltaMap(1000));
    await Promise.all([log.mark([10]), log.clear([500])]);

    expect(await inspectDirtyRegionLog(file)).toEqual(before);
    expect((await stat(file)).mtimeMs).toBe(mtime);
    expect((await readFile(file)).equals(bytes)).toBe(true);

    await log.mark([10, 40]); // one new region: one write
    expect((await inspectDirtyRegionLog(file)).generations).toEqual([3, 2]);
    await log.close();
  });

  it('alternates slots with increasing generations', async () => {
    const log = await DirtyRegionLog.create(file, OPTIONS);
    const seen: Array<{ generations: unknown; activeSlot: unknown }> = [];
    for (let i = 0; i < 4; i++) {
      await log.mark([i]);
      const info = await inspectDirtyRegionLog(file);
      seen.push({ generations: info.generations, activeSlot: info.activeSlot });
    }
    expect(seen).toEqual([
      { generations: [1, 2], activeSlot: 1 },
      { generations: [3, 2], activeSlot: 0 },
      { generations: [3, 4], activeSlot: 1 },
      { generations: [5, 4], activeSlot: 0 },
    ]);
    await log.close();
  });

  describe('crash safety', () => {
    /** A log with regions [1, 2] durable in slot 0 (generation 3), and the file bytes after marking 3 into slot 1. */
    async function beforeAndAfter(): Promise<{ before: Buffer; after: Buffer }> {
      const log = await DirtyRegionLog.create(file, OPTIONS);
      await log.mark([1]); // slot 1, generation 2
      await log.mark([2]); // slot 0, generation 3
      const before = await readFile(file);
      await log.mark([3]); // slot 1, generation 4
      await log.close();
      return { before, after: await readFile(file) };
    }

    it('a torn slot write leaves the previous state', async () => {
      const { before, after } = await beforeAndAfter();
      const slot = slotSpan(1000, 1);
      expect(await openRegions()).toEqual([1, 2, 3]);
      // Every split point of the new slot write: the first `cut` bytes new, the rest old.
      for (const cut of [1, 8, 9, 64, slot.length - 32, slot.length - 1]) {
        const torn = Buffer.from(before);
        after.copy(torn, slot.start, slot.start, slot.start + cut);
        await writeFile(file, torn);
        expect(await openRegions()).toEqual([1, 2]);
        const info = await inspectDirtyRegionLog(file);
        expect(info.activeSlot).toBe(0);
        expect(info.generations[0]).toBe(3);
        expect(info.generations[1]).toBeUndefined();
        expect(info.slotProblems[1]).toBe('digest mismatch');
      }
    });

    it('a file truncated in the middle of the inactive slot gives the other slot, and the next update repairs it', async () => {
      const { before } = await beforeAndAfter();
      const slot = slotSpan(1000, 1);
      await writeFile(file, before);
      await truncate(file, slot.start + Math.floor(slot.length / 2));
      expect((await inspectDirtyRegionLog(file)).slotProblems).toEqual([undefined, 'truncated']);

      const log = await DirtyRegionLog.open(file, OPTIONS);
      expect(Array.from(log.dirty())).toEqual([1, 2]);
      await log.mark([4]);
      await log.close();
      expect((await stat(file)).size).toBe(slot.start + slot.length);
      const info = await inspectDirtyRegionLog(file);
      expect(info.generations).toEqual([3, 4]);
      expect(await openRegions()).toEqual([1, 2, 4]);
    });

    it('damage to one slot falls back to the other', async () => {
      const { after } = await beforeAndAfter();
      const [slot0, slot1] = [slotSpan(1000, 0), slotSpan(1000, 1)];
      // Damage the newest slot (1, generation 4): the previous state comes back.
      for (const at of [0, 8, 9, slot1.length - 1]) {
        await writeFile(file, after);
        await flipByte(file, slot1.start + at);
        expect(await openRegions()).toEqual([1, 2]);
      }
      // Damage the older slot (0): the newest state stays.
      for (const at of [0, 8, slot0.length - 1]) {
        await writeFile(file, after);
        await flipByte(file, slot0.start + at);
        expect(await openRegions()).toEqual([1, 2, 3]);
      }
      // Padding between the slots is not covered and does not matter.
      await writeFile(file, after);
      await flipByte(file, slot0.start + slot0.length);
      expect(await openRegions()).toEqual([1, 2, 3]);
    });

    it('refuses a log whose two slots are both damaged', async () => {
      const { after } = await beforeAndAfter();
      await writeFile(file, after);
      await flipByte(file, slotSpan(1000, 0).start + 20);
      await flipByte(file, slotSpan(1000, 1).start + 20);
      const error = await refusal(DirtyRegionLog.open(file, OPTIONS));
      expect(error).toBeInstanceOf(FormatError);
      expect(error.code).toBe('FORMAT_CORRUPT');
      expect(error.message).toBe(
        `dirty region log ${file}: both slots are damaged (slot 0: digest mismatch, slot 1: digest mismatch), so the dirty regions are unknown: delete it and run a full scan`,
      );
      const info = await inspectDirtyRegionLog(file);
      expect(info.activeSlot).toBeUndefined();
      expect(info.dirtyCount).toBeUndefined();
      // Truncated before slot 1 and slot 0 damaged: refused too.
      await truncate(file, slotSpan(1000, 1).start);
      expect((await refusal(DirtyRegionLog.open(file, OPTIONS))).code).toBe('FORMAT_CORRUPT');
    });

    it('refuses a slot with bits set past the last region even if its digest matches', async () => {
      const regionCount = 13;
      const options = { ...OPTIONS, regionCount };
      const log = await DirtyRegionLog.create(file, options);
      await log.mark([12]);
      await log.close();
      const bytes = await readFile(file);
      const header = bytes.subarray(0, DRL_HEADER_BYTES);
      for (const k of [0, 1] as const) {
        const { start, length } = slotSpan(regionCount, k);
        bytes[start + 8 + 1]! |= 0x80; // region 15: past the end
        createHash('sha256')
          .update(header)
          .update(bytes.subarray(start, start + length - 32))
          .digest()
          .copy(bytes, start + length - 32);
      }
      await writeFile(file, bytes);
      expect((await inspectDirtyRegionLog(file)).slotProblems).toEqual(['bits set past the last region', 'bits set past the last region']);
      expect((await refusal(DirtyRegionLog.open(file, options))).code).toBe('FORMAT_CORRUPT');
    });

    it('does not accept slots pasted from another volume\'s log', async () => {
      const otherFile = join(dir, 'other.drl');
      const other = await DirtyRegionLog.create(otherFile, { ...OPTIONS, volumeId: OTHER_VOLUME });
      await other.mark([9]);
      await other.close();
      const log = await DirtyRegionLog.create(file, OPTIONS);
      await log.mark([1]);
      await log.close();

      const mine = await readFile(file);
      const theirs = await readFile(otherFile);
      const pasted = Buffer.concat([mine.subarray(0, DRL_BLOCK), theirs.subarray(DRL_BLOCK)]);
      await writeFile(file, pasted);
      expect((await inspectDirtyRegionLog(file)).slotProblems).toEqual(['digest mismatch', 'digest mismatch']);
      expect((await refusal(DirtyRegionLog.open(file, OPTIONS))).code).toBe('FORMAT_CORRUPT');
    });
  });

  describe('refusals', () => {
    async function withLog(): Promise<void> {
      const log = await DirtyRegionLog.create(file, OPTIONS);
      await log.mark([1, 2]);
      await log.close();
    }

    it('refuses a wrong magic', async () => {
      await withLog();
      await flipByte(file, 3);
      const error = await refusal(DirtyRegionLog.open(file, OPTIONS));
      expect(error).toBeInstanceOf(FormatError);
      expect(error.code).toBe('FORMAT_BAD_MAGIC');
      expect(error.message).toBe(`dirty region log ${file}: wrong magic, this is not a dirty region log: pass the right --drl file`);

      await writeFile(file, 'hello, this is a text file and not a log at all\n');
      expect((await refusal(DirtyRegionLog.open(file, OPTIONS))).code).toBe('FORMAT_BAD_MAGIC');
      await writeFile(file, '');
      expect((await refusal(DirtyRegionLog.open(file, OPTIONS))).code).toBe('FORMAT_BAD_MAGIC');
      expect((await refusal(DirtyRegionLog.openOrCreate(file, OPTIONS))).code).toBe('FORMAT_BAD_MAGIC');
    });

    it('refuses an unknown format version', async () => {
      await withLog();
      const bytes = await readFile(file);
      bytes.writeUInt16LE(2, 8);
      await writeFile(file, bytes);
      const error = await refusal(DirtyRegionLog.open(file, OPTIONS));
      expect(error.code).toBe('FORMAT_UNSUPPORTED_VERSION');
      expect(error.message).toMatch(/format version 2 is not supported/);
    });

    it('refuses a damaged header', async () => {
      for (const at of [12, 16, 30, 90, 100]) {
        await rm(file, { force: true });
        await withLog();
        await flipByte(file, at);
        const error = await refusal(DirtyRegionLog.open(file, OPTIONS));
        expect(error.code).toBe('FORMAT_CORRUPT');
        expect(error.message).toMatch(/header is damaged/);
      }
      await rm(file);
      await withLog();
      await truncate(file, 60);
      expect((await refusal(DirtyRegionLog.open(file, OPTIONS))).code).toBe('FORMAT_BAD_LENGTH');
    });

    it('refuses trailing bytes after the last slot', async () => {
      await withLog();
      await writeFile(file, Buffer.concat([await readFile(file), Buffer.alloc(10)]));
      expect((await refusal(DirtyRegionLog.open(file, OPTIONS))).code).toBe('FORMAT_TRAILING_DATA');
    });

    it("refuses another volume's log, naming both volumes", async () => {
      await withLog();
      const error = await refusal(DirtyRegionLog.open(file, { ...OPTIONS, volumeId: OTHER_VOLUME }));
      expect(error.code).toBe('VOLUME_MISMATCH');
      expect(error.message).toBe(
        `${file} belongs to volume ${VOLUME}, this repository is ${OTHER_VOLUME}: delete it or pass the right --drl`,
      );
    });

    it('refuses a log of another geometry', async () => {
      await withLog();
      const fewer = await refusal(DirtyRegionLog.open(file, { ...OPTIONS, regionCount: 999 }));
      expect(fewer.code).toBe('VOLUME_MISMATCH');
      expect(fewer.message).toBe(
        `${file} covers 1000 regions of 65536 bytes, the volume has 999 regions of 65536 bytes: delete it or pass the right --drl`,
      );
      expect((await refusal(DirtyRegionLog.open(file, { ...OPTIONS, regionSize: 1 << 20 }))).code).toBe('VOLUME_MISMATCH');
    });

    it('refuses bad regions without disturbing other updates', async () => {
      const log = await DirtyRegionLog.create(file, OPTIONS);
      const good = log.mark([1]);
      await expect(log.mark([1000])).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(log.mark([1.5])).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(log.clear(DeltaMap.of(999, [1]))).rejects.toBeInstanceOf(InvalidArgumentError);
      await good;
      expect(Array.from(log.dirty())).toEqual([1]);
      await log.close();
      await expect(log.mark([2])).rejects.toBeInstanceOf(InvalidArgumentError);
      expect(() => log.dirty()).toThrow(/after close/);
      await log.close(); // closing twice is fine
    });
  });

  it('serializes concurrent marks and clears: the result is the sequential one', async () => {
    const rand = seededRandom(7);
    const regionCount = 5000;
    const options = { ...OPTIONS, regionCount };
    const log = await DirtyRegionLog.create(file, options);
    const model = new Set<number>();
    const operations: Array<Promise<void>> = [];
    for (let round = 0; round < 20; round++) {
      // A burst of updates issued without waiting, then a few awaited ones, interleaved.
      const burst = 1 + Math.floor(rand() * 30);
      for (let i = 0; i < burst; i++) {
        const regions = Array.from({ length: 1 + Math.floor(rand() * 20) }, () => Math.floor(rand() * 200));
        const asMap = rand() < 0.5;
        const arg = asMap ? DeltaMap.of(regionCount, regions) : regions;
        if (rand() < 0.55) {
          operations.push(log.mark(arg));
          for (const r of regions) model.add(r);
        } else {
          operations.push(log.clear(arg));
          for (const r of regions) model.delete(r);
        }
      }
      if (rand() < 0.3) {
        await Promise.all(operations);
        expect(Array.from(log.dirty())).toEqual([...model].sort((a, b) => a - b));
      }
    }
    // Same-tick opposite updates of one region: the later call wins.
    operations.push(log.mark([4000]), log.clear([4000]), log.clear([4001]), log.mark([4001]));
    model.add(4001);
    await Promise.all(operations);
    const expected = [...model].sort((a, b) => a - b);
    expect(Array.from(log.dirty())).toEqual(expected);
    await log.close();
    expect(await openRegions(file, options)).toEqual(expected);
    const info = await inspectDirtyRegionLog(file);
    const finalGeneration = Math.max(...info.generations.map((g) => g ?? 0));
    // Bursts share writes: far fewer generations than updates.
    expect(finalGeneration).toBeLessThan(operations.length);
  });

  it('keeps a marked region dirty when a mark follows an in-flight clear', async () => {
    const log = await DirtyRegionLog.create(file, OPTIONS);
    await log.mark([5]);
    const clearing = log.clear([5]); // in flight
    const marking = log.mark([5]); // must not be skipped because 5 is still durable right now
    await Promise.all([clearing, marking]);
    expect(log.has(5)).toBe(true);
    await log.close();
    expect(await openRegions()).toEqual([5]);
  });

  it('handles a 16 Mi region map', async () => {
    const regionCount = 16 * 1024 * 1024;
    const options = { ...OPTIONS, regionCount };
    const log = await DirtyRegionLog.create(file, options);
    expect((await stat(file)).size).toBeGreaterThan(2 * 2 * 1024 * 1024);

    const written = new DeltaMap(regionCount);
    written.setRange(1_000_000, 3_000_000);
    for (let r = 0; r < regionCount; r += 4099) written.set(r);
    await log.mark(written);
    for (let i = 0; i < 20; i++) await log.mark([regionCount - 1 - i * 7919]);
    const committed = new DeltaMap(regionCount);
    committed.setRange(0, 2_000_000);
    await log.clear(committed);
    await log.mark([regionCount - 1]); // already marked: no write

    const expected = written.clone().subtract(committed);
    for (let i = 0; i < 20; i++) expected.set(regionCount - 1 - i * 7919);
    expect(log.dirty().equals(expected)).toBe(true);
    await log.close();

    const again = await DirtyRegionLog.open(file, options);
    expect(again.dirty().equals(expected)).toBe(true);
    expect(again.count()).toBe(expected.count());
    await again.close();
    expect((await inspectDirtyRegionLog(file)).generations).toEqual([23, 22]);
  });
});
