// The write path of a protected volume. Every change to the primary marks the dirty region log
// (durably, before the data can be), saves the pre-images of sealed regions the shipper has not
// read yet, is applied to the primary, and joins the open delta map. seal() swaps in a fresh
// open map at one instant; readSealed() then yields each sealed region's content as of that
// instant, whatever the host writes meanwhile.
//
// Within each region of the open map it also tracks which blocks were written, so a seal can
// ship a patch of those blocks instead of the whole region (model/patches.ts). A block is marked
// before its write starts and again once it is done, so the blocks of a seal hold every write
// that could have changed what the shipper reads, including writes still in flight at the seal.
//
// Several seals can be unshipped at once (a direct shipment still trying while later intervals
// are sealed into the spool), so pre-images are kept per seal: a region can be sealed and
// unread in two of them, each needing its own content. A direct shipment also keeps, while
// memory allows, the pre-images of regions it has already read: if it fails, its point in time
// is read again for the spool and must still be its content at the seal.

import type { FileHandle } from 'node:fs/promises';
import { DeltaMap } from '../../model/delta-map.js';
import { type Geometry, regionLength } from '../../model/regions.js';
import { NbdRequestError } from '../../nbd/types.js';
import type { ChangeRecorder } from '../../volume/changes.js';
import type { DirtyRegionLog } from '../../volume/dirty-region-log.js';
import { readAllocated } from '../../volume/extents.js';
import type { ProtectHooks } from './options.js';
import { allBlocks, emptyBlocks, markBlocks, orBlocks } from '../../model/patches.js';

/**
 * The blocks written in the regions of a map since each region's last shipped version: a bitmap
 * per region (`blocks`), except for regions whose blocks are unknown (`unknown`: they ship
 * whole). A region of the map with neither is unknown too (after a restart the DRL names
 * regions, not blocks). A write covering whole regions sets them unknown at once: they ship
 * whole anyway, and a bitmap each would cost memory in proportion to the write.
 */
export interface BlockMaps {
  blocks: Map<number, Uint8Array>;
  unknown: DeltaMap;
}

/** Regions whose written blocks are tracked at once; past this, more regions ship whole. */
const MAX_TRACKED_REGIONS = 1 << 18;

/** The regions of one seal, to be read as of its instant. */
export interface SealedGeneration {
  map: DeltaMap;
  /** The blocks written in each region of `map` since its last shipped version. */
  blocks: BlockMaps;
  /** Regions the shipper has read (their content at the seal is taken). */
  shipped: DeltaMap;
  preimages: Map<number, Uint8Array>;
  /** Per region: the read or pre-image copy in progress. */
  busy: Map<number, Promise<void>>;
  /** Per region: resolves when the shipper has read it. */
  waiters: Map<number, Array<() => void>>;
  firstWrite: number | undefined;
  /**
   * Keep the content at the seal of regions already read, too (a direct shipment: if it fails,
   * its point goes to the spool and is read again). Only while pre-image memory has room.
   */
  keepAfterRead: boolean;
  /** Regions read whose pre-images are kept only in case the shipment fails. */
  kept: Set<number>;
  /** A region read was written again and its content at the seal was not kept. */
  lost: boolean;
}

export interface WriteTrackerOptions {
  clock: () => number;
  /** Bytes of pre-images kept before writes to unread sealed regions wait for the shipper. */
  preimageLimit: number;
  /** The repository's block size: the unit in which written blocks are tracked. */
  blockSize: number;
  hooks?: ProtectHooks;
}

export class WriteTracker {
  private open: DeltaMap;
  private openBlocks: BlockMaps;
  private openFirstWrite: number | undefined;
  /** Sealed, not yet shipped or given up, in the order they were sealed. */
  private readonly generations = new Set<SealedGeneration>();
  private readonly drlMarked: DeltaMap;
  private drlPending: Promise<void> = Promise.resolve();
  private readonly recorders = new Set<{ map: DeltaMap }>();
  private preimagesHeld = 0;
  /** Regions with writes in progress (between beforeWrite and afterWrite), with their count. */
  private readonly writing = new Map<number, number>();

  constructor(
    private readonly handle: FileHandle,
    private readonly drl: DirtyRegionLog,
    private readonly geometry: Geometry,
    private readonly options: WriteTrackerOptions,
  ) {
    // After a crash, the DRL lists what was written and not committed: ship it with the first seal.
    this.open = drl.dirty();
    this.drlMarked = this.open.clone();
    this.openBlocks = { blocks: new Map(), unknown: new DeltaMap(geometry.regionCount) };
    if (!this.open.isEmpty()) this.openFirstWrite = options.clock();
  }

  /** Bytes of pre-images held for sealed, unread regions. */
  get preimageBytes(): number {
    return this.preimagesHeld;
  }

  /** Regions in the dirty region log. */
  get drlRegions(): number {
    return this.drl.count();
  }

  /** The regions the DRL lists (a copy). */
  dirtyInDrl(): DeltaMap {
    return this.drl.dirty();
  }

  /** No write since the last seal. */
  get openIsEmpty(): boolean {
    return this.open.isEmpty();
  }

  get openRegions(): number {
    return this.open.count();
  }

  /** The time of the oldest write in the open map or an unshipped seal. */
  get oldestWrite(): number | undefined {
    let oldest = this.openFirstWrite;
    for (const sealed of this.generations) if (sealed.firstWrite !== undefined) oldest = Math.min(oldest ?? Infinity, sealed.firstWrite);
    return oldest;
  }

  /**
   * Every change to the primary goes through here: the regions [first, end) it touches are
   * counted as being written, marked in the DRL (durably, before the data) and their sealed,
   * unshipped pre-images saved; then `apply` changes the primary, and the regions join the open
   * delta map. Per-write work is proportional to the regions touched, never to the volume.
   */
  async tracked(offset: number, length: number, fua: boolean, apply: () => Promise<void>): Promise<void> {
    if (length === 0) return;
    if (offset < 0 || offset + length > this.geometry.volumeSize) throw new NbdRequestError('EINVAL', `range ${offset}+${length} is past the end`);
    const regionSize = this.geometry.regionSize;
    const first = Math.floor(offset / regionSize);
    const end = Math.ceil((offset + length) / regionSize);
    this.beginWrite(first, end);
    try {
      // Before any await: a seal from here on counts these blocks as written.
      this.noteBlocks(offset, length);
      await this.beforeWrite(first, end);
      await this.options.hooks?.beforeWriteApplies?.(offset, length);
      await apply();
      if (fua) await this.handle.datasync();
      this.afterWrite(offset, length);
    } finally {
      this.endWrite(first, end);
    }
  }

  /** Resolves once every DRL mark made so far is durable. */
  async marksDurable(): Promise<void> {
    await this.drlPending;
  }

  record(): ChangeRecorder {
    const recorder = { map: new DeltaMap(this.geometry.regionCount) };
    this.recorders.add(recorder);
    return {
      snapshot: () => recorder.map.clone(),
      stop: () => {
        this.recorders.delete(recorder);
        return recorder.map;
      },
    };
  }

  /** Regions written and not shipped: the open map and the unshipped seals (a copy). */
  unshipped(): DeltaMap {
    const pending = this.open.clone();
    for (const sealed of this.generations) pending.union(sealed.map);
    return pending;
  }

  committed(regions: DeltaMap): void {
    this.open.subtract(regions);
    // Their next version is relative to the one just committed.
    for (const region of [...this.openBlocks.blocks.keys()]) if (regions.has(region)) this.openBlocks.blocks.delete(region);
    this.openBlocks.unknown.subtract(regions);
    if (this.open.isEmpty()) this.openFirstWrite = undefined; // nothing unshipped is that old any more
  }

  /** Clears the DRL bits of `candidates` (consumed) less `pending` and regions being written. */
  async clearDrl(candidates: DeltaMap, pending: DeltaMap): Promise<void> {
    const writing = this.inFlight();
    candidates.subtract(pending).subtract(writing);
    writing.dispose();
    this.drlMarked.subtract(candidates);
    await this.drl.clear(candidates);
    candidates.dispose();
  }

  /**
   * Swaps in a fresh open map: the sealed regions, to be read as of this instant. With
   * `keepAfterRead`, regions keep their content at the seal after they are read as well (see
   * SealedGeneration).
   */
  seal(options: { keepAfterRead: boolean }): SealedGeneration {
    const sealed: SealedGeneration = {
      map: this.open,
      blocks: this.openBlocks,
      shipped: new DeltaMap(this.geometry.regionCount),
      preimages: new Map(),
      busy: new Map(),
      waiters: new Map(),
      firstWrite: this.openFirstWrite,
      keepAfterRead: options.keepAfterRead,
      kept: new Set(),
      lost: false,
    };
    this.open = new DeltaMap(this.geometry.regionCount);
    this.openBlocks = { blocks: new Map(), unknown: new DeltaMap(this.geometry.regionCount) };
    this.openFirstWrite = undefined;
    this.generations.add(sealed);
    return sealed;
  }

  /** The sealed regions are shipped: no longer pending, nothing of them to preserve (their pre-images go with release()). */
  shippedAll(sealed: SealedGeneration): void {
    this.generations.delete(sealed);
  }

  /** Lets go of a seal: its pre-images are freed and writes waiting on it go on. */
  release(sealed: SealedGeneration): void {
    this.generations.delete(sealed);
    this.preimagesHeld -= [...sealed.preimages.values()].reduce((n, b) => n + b.length, 0);
    sealed.preimages.clear();
    sealed.kept.clear();
    for (const list of sealed.waiters.values()) for (const wake of list) wake();
    sealed.waiters.clear();
    sealed.map.dispose();
    sealed.shipped.dispose();
    sealed.blocks.unknown.dispose();
  }

  /** A seal that will not ship as its own point in time: its regions go out with the next seal. */
  reopen(sealed: SealedGeneration): void {
    this.reopenRegions(sealed.map.regions(), sealed.firstWrite, sealed.blocks);
  }

  /**
   * Regions of a point in time that will not ship as its own (a dropped spool segment): they go
   * out with the next seal, their written blocks (`blocks`; unknown without) joining the open ones.
   */
  reopenRegions(regions: Iterable<number>, firstWrite: number | undefined, blocks?: BlockMaps): void {
    const { blocks: mine, unknown } = this.openBlocks;
    for (const region of regions) {
      const theirs = blocks === undefined || blocks.unknown.has(region) ? undefined : blocks.blocks.get(region);
      const ours = mine.get(region);
      if (theirs === undefined) unknown.set(region);
      else if (ours !== undefined) orBlocks(ours, theirs);
      else if (!this.open.has(region)) mine.set(region, theirs.slice());
      // else: in the open map with its blocks unknown already
      this.open.set(region);
    }
    if (firstWrite !== undefined) this.openFirstWrite = Math.min(this.openFirstWrite ?? Infinity, firstWrite);
  }

  /** These regions ship whole next time (their stored version is not known to be the one their writes apply to). */
  distrust(regions: DeltaMap): void {
    this.openBlocks.unknown.union(regions);
  }

  /** The blocks of `region` written since its last shipped version, or undefined: unknown (ship it whole). */
  changedBlocks(sealed: SealedGeneration, region: number): Uint8Array | undefined {
    return sealed.blocks.unknown.has(region) ? undefined : sealed.blocks.blocks.get(region);
  }

  /**
   * Marks the blocks bytes [offset, offset + length) touch in the open map's regions. Regions
   * the bytes cover whole become unknown (they ship whole); in the at most two regions they
   * cover in part, the blocks are marked, unless the region's blocks are unknown already (in the
   * open map with no bitmap) or too many regions are tracked: a region tracked for the first
   * time starts from nothing (its last shipped version).
   */
  private noteBlocks(offset: number, length: number): void {
    const { regionSize, volumeSize } = this.geometry;
    const { blocks: tracked, unknown } = this.openBlocks;
    const end = offset + length;
    const first = Math.floor(offset / regionSize);
    const last = Math.floor((end - 1) / regionSize);
    // Regions covered whole: from the first that starts at or after `offset` to the last that ends by `end`.
    const wholeFrom = Math.ceil(offset / regionSize);
    const wholeTo = end === volumeSize ? last + 1 : Math.floor(end / regionSize);
    if (wholeTo > wholeFrom) unknown.setRange(wholeFrom, wholeTo);
    for (const region of first === last ? [first] : [first, last]) {
      if (region >= wholeFrom && region < wholeTo) continue;
      if (unknown.has(region)) continue;
      let blocks = tracked.get(region);
      if (blocks === undefined) {
        if (this.open.has(region)) continue; // in the open map with its blocks unknown
        if (tracked.size >= MAX_TRACKED_REGIONS) {
          unknown.set(region);
          continue;
        }
        blocks = emptyBlocks(regionLength(this.geometry, region), this.options.blockSize);
        tracked.set(region, blocks);
      }
      const start = region * regionSize;
      markBlocks(blocks, Math.max(offset, start) - start, Math.min(end, start + regionSize) - start, this.options.blockSize);
      // Every block written: the region ships whole anyway, and needs no bitmap.
      if (allBlocks(blocks, regionLength(this.geometry, region), this.options.blockSize)) {
        unknown.set(region);
        tracked.delete(region);
      }
    }
  }

  /**
   * A failed direct shipment is to be read again for the spool: from here on (before any await)
   * every write to its regions saves a pre-image as for regions not yet read, and the pre-images
   * kept for read regions serve the new reading. False when its content at the seal is not all
   * at hand any more (a region read was written again with no room to keep it).
   */
  readAgain(sealed: SealedGeneration): boolean {
    if (sealed.lost) return false;
    for (const region of [...sealed.shipped.regions()]) sealed.shipped.clear(region);
    sealed.kept.clear();
    sealed.keepAfterRead = false;
    return true;
  }

  /**
   * The region's content at the seal instant: its pre-image if one was saved, else the primary
   * (read into `into` when given, at least the region's length: the caller's to reuse then).
   */
  async readSealed(sealed: SealedGeneration, region: number, into?: Uint8Array): Promise<Uint8Array> {
    await this.options.hooks?.beforeShipRead?.(region);
    for (let busy = sealed.busy.get(region); busy !== undefined; busy = sealed.busy.get(region)) await busy;
    const saved = sealed.preimages.get(region);
    let bytes: Uint8Array;
    if (saved !== undefined) bytes = saved;
    else {
      const task = (async () => {
        const length = regionLength(this.geometry, region);
        const buffer = into !== undefined && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafe(length);
        await this.readFully(buffer, region * this.geometry.regionSize);
        bytes = buffer;
      })();
      sealed.busy.set(region, task);
      await task;
      if (sealed.busy.get(region) === task) sealed.busy.delete(region);
    }
    sealed.shipped.set(region);
    for (const wake of sealed.waiters.get(region) ?? []) wake();
    sealed.waiters.delete(region);
    return bytes!;
  }

  /** The primary's bytes at `position` (holes of a sparse image zero-filled in memory, not read). */
  async readFully(buffer: Uint8Array, position: number): Promise<void> {
    try {
      await readAllocated(this.handle.fd, buffer, position);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EOF') throw new NbdRequestError('EIO', `${(error as Error).message} of the primary`);
      throw error;
    }
  }

  /** Regions that writes are changing right now (not yet in the open map). */
  private inFlight(): DeltaMap {
    const map = new DeltaMap(this.geometry.regionCount);
    for (const region of this.writing.keys()) map.set(region);
    return map;
  }

  private beginWrite(first: number, end: number): void {
    for (let region = first; region < end; region++) this.writing.set(region, (this.writing.get(region) ?? 0) + 1);
  }

  private endWrite(first: number, end: number): void {
    for (let region = first; region < end; region++) {
      const n = (this.writing.get(region) ?? 1) - 1;
      if (n === 0) this.writing.delete(region);
      else this.writing.set(region, n);
    }
  }

  /** Marks the DRL durably for regions [first, end) not yet marked, and saves pre-images of sealed, unshipped ones. */
  private async beforeWrite(first: number, end: number): Promise<void> {
    let fresh: DeltaMap | undefined;
    for (let region = first; region < end; region++) {
      if (!this.drlMarked.has(region)) (fresh ??= new DeltaMap(this.geometry.regionCount)).set(region);
    }
    if (fresh !== undefined) {
      const marking = fresh;
      this.drlMarked.union(marking);
      const mark: Promise<void> = this.drl.mark(marking).then(
        () => marking.dispose(),
        (error: unknown) => {
          // Not marked after all: later writes to these regions must try again, and must not
          // inherit this failure; the writes waiting on it now fail with it.
          this.drlMarked.subtract(marking);
          marking.dispose();
          if (this.drlPending === mark) this.drlPending = Promise.resolve();
          throw error;
        },
      );
      this.drlPending = mark;
    }
    await this.drlPending;
    for (const sealed of [...this.generations]) await this.preserve(sealed, first, end);
  }

  /** Saves the content at the seal of `sealed`'s regions in [first, end) that still need it. */
  private async preserve(sealed: SealedGeneration, first: number, end: number): Promise<void> {
    for (let region = first; region < end; region++) {
      for (;;) {
        // Shipped or given up while this write waited: nothing of it is left to preserve.
        if (!this.generations.has(sealed)) return;
        if (!sealed.map.has(region) || sealed.preimages.has(region)) break;
        const busy = sealed.busy.get(region);
        if (busy !== undefined) {
          await busy;
          continue;
        }
        const length = regionLength(this.geometry, region);
        const read = sealed.shipped.has(region);
        if (read && (!sealed.keepAfterRead || sealed.lost)) break;
        if (this.preimagesHeld + length > this.options.preimageLimit) {
          if (read) {
            // Kept only in case the shipment fails: no room, so a failure cannot keep its point.
            this.loseKept(sealed);
            break;
          }
          // Pre-images kept only in case of a failure make room first: they never make a write wait.
          if (this.evictKept(length)) continue;
          // Out of pre-image memory: wait until the shipper has read this region.
          this.options.hooks?.writeWaits?.(region);
          await new Promise<void>((wake) => (sealed.waiters.get(region) ?? sealed.waiters.set(region, []).get(region)!).push(wake));
          continue;
        }
        const task = (async () => {
          const copy = Buffer.allocUnsafe(length);
          await this.readFully(copy, region * this.geometry.regionSize);
          // Released meanwhile, or the kept copies given up: not needed, not counted.
          if (!this.generations.has(sealed) || (read && sealed.lost)) return;
          sealed.preimages.set(region, copy);
          if (read && sealed.keepAfterRead) sealed.kept.add(region); // not if it is being read again for the spool now
          this.preimagesHeld += length;
        })();
        sealed.busy.set(region, task);
        await task;
        if (sealed.busy.get(region) === task) sealed.busy.delete(region);
      }
    }
  }

  /** `sealed` gives up the pre-images it kept for regions already read: a failure can no longer keep its point. */
  private loseKept(sealed: SealedGeneration): void {
    sealed.lost = true;
    for (const region of sealed.kept) {
      this.preimagesHeld -= sealed.preimages.get(region)?.length ?? 0;
      sealed.preimages.delete(region);
    }
    sealed.kept.clear();
  }

  /** Frees pre-images kept only in case a shipment fails until `length` more fit; false (freeing none) when that would not do. */
  private evictKept(length: number): boolean {
    let keptBytes = 0;
    for (const sealed of this.generations) for (const region of sealed.kept) keptBytes += sealed.preimages.get(region)?.length ?? 0;
    if (this.preimagesHeld - keptBytes + length > this.options.preimageLimit) return false;
    for (const sealed of this.generations) {
      if (this.preimagesHeld + length <= this.options.preimageLimit) break;
      if (sealed.kept.size > 0) this.loseKept(sealed);
    }
    return this.preimagesHeld + length <= this.options.preimageLimit;
  }

  private afterWrite(offset: number, length: number): void {
    const regionSize = this.geometry.regionSize;
    const first = Math.floor(offset / regionSize);
    const end = Math.ceil((offset + length) / regionSize);
    this.openFirstWrite ??= this.options.clock();
    // Again: a seal since the start of this write has taken the blocks marked then.
    this.noteBlocks(offset, length);
    this.open.setRange(first, end);
    for (const recorder of this.recorders) recorder.map.setRange(first, end);
  }
}
