// The write path of a protected volume. Every change to the primary marks the dirty region log
// (durably, before the data can be), saves the pre-images of sealed regions the shipper has not
// read yet, is applied to the primary, and joins the open delta map. seal() swaps in a fresh
// open map at one instant; readSealed() then yields each sealed region's content as of that
// instant, whatever the host writes meanwhile.

import type { FileHandle } from 'node:fs/promises';
import { DeltaMap } from '../../model/delta-map.js';
import { type Geometry, regionLength } from '../../model/pit-map.js';
import { NbdRequestError } from '../../nbd/types.js';
import type { ChangeRecorder } from '../../volume/changes.js';
import type { DirtyRegionLog } from '../../volume/dirty-region-log.js';
import { preadFully } from '../../volume/positional-io.js';
import type { ProtectHooks } from './options.js';

/** The regions of one seal, to be read as of its instant. */
export interface SealedGeneration {
  map: DeltaMap;
  /** Regions the shipper has read (their content at the seal is taken; later writes need no pre-image). */
  shipped: DeltaMap;
  preimages: Map<number, Uint8Array>;
  /** Per region: the read or pre-image copy in progress. */
  busy: Map<number, Promise<void>>;
  /** Per region: resolves when the shipper has read it. */
  waiters: Map<number, Array<() => void>>;
  firstWrite: number | undefined;
}

export interface WriteTrackerOptions {
  clock: () => number;
  /** Bytes of pre-images kept before writes to unread sealed regions wait for the shipper. */
  preimageLimit: number;
  hooks?: ProtectHooks;
}

export class WriteTracker {
  private open: DeltaMap;
  private openFirstWrite: number | undefined;
  private sealed: SealedGeneration | undefined;
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

  /** The time of the oldest write not yet sealed into the spool or shipped. */
  get oldestWrite(): number | undefined {
    return this.sealed?.firstWrite ?? this.openFirstWrite;
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
      await this.beforeWrite(first, end);
      await apply();
      if (fua) await this.handle.datasync();
      this.afterWrite(first, end);
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

  /** Regions written and not shipped: the open map and the sealed one (a copy). */
  unshipped(): DeltaMap {
    const pending = this.open.clone();
    if (this.sealed !== undefined) pending.union(this.sealed.map);
    return pending;
  }

  committed(regions: DeltaMap): void {
    this.open.subtract(regions);
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

  /** Swaps in a fresh open map: the sealed regions, to be read as of this instant. */
  seal(): SealedGeneration {
    const sealed: SealedGeneration = {
      map: this.open,
      shipped: new DeltaMap(this.geometry.regionCount),
      preimages: new Map(),
      busy: new Map(),
      waiters: new Map(),
      firstWrite: this.openFirstWrite,
    };
    this.open = new DeltaMap(this.geometry.regionCount);
    this.openFirstWrite = undefined;
    this.sealed = sealed;
    return sealed;
  }

  /** The sealed regions are shipped: no longer pending (their pre-images go with release()). */
  shippedAll(sealed: SealedGeneration): void {
    if (this.sealed === sealed) this.sealed = undefined;
  }

  /** Lets go of a seal: its pre-images are freed and writes waiting on it go on. */
  release(sealed: SealedGeneration): void {
    if (this.sealed === sealed) this.sealed = undefined;
    this.preimagesHeld -= [...sealed.preimages.values()].reduce((n, b) => n + b.length, 0);
    for (const list of sealed.waiters.values()) for (const wake of list) wake();
    sealed.map.dispose();
    sealed.shipped.dispose();
  }

  /** A seal that will not ship as its own point in time: its regions go out with the next seal. */
  reopen(sealed: SealedGeneration): void {
    this.open.union(sealed.map);
    if (sealed.firstWrite !== undefined) this.openFirstWrite = Math.min(this.openFirstWrite ?? Infinity, sealed.firstWrite);
  }

  /**
   * A failed shipment's regions that were written again after the shipper read them (or are
   * being written now): their content at the seal is gone.
   */
  rewrittenSinceRead(sealed: SealedGeneration): DeltaMap {
    const rewritten = sealed.shipped.clone().intersect(this.open);
    for (const region of this.writing.keys()) if (sealed.shipped.has(region)) rewritten.set(region);
    return rewritten;
  }

  /**
   * From here on (before any await) writes to regions already read save pre-images again: the
   * sealed regions are read anew, and must still yield their content at the seal.
   */
  readAgain(sealed: SealedGeneration): void {
    for (const region of [...sealed.shipped.regions()]) sealed.shipped.clear(region);
  }

  /** The region's content at the seal instant: its pre-image if one was saved, else the primary. */
  async readSealed(sealed: SealedGeneration, region: number): Promise<Uint8Array> {
    await this.options.hooks?.beforeShipRead?.(region);
    for (let busy = sealed.busy.get(region); busy !== undefined; busy = sealed.busy.get(region)) await busy;
    const saved = sealed.preimages.get(region);
    let bytes: Uint8Array;
    if (saved !== undefined) bytes = saved;
    else {
      const task = (async () => {
        const buffer = Buffer.allocUnsafe(regionLength(this.geometry, region));
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

  async readFully(buffer: Uint8Array, position: number): Promise<void> {
    const n = await preadFully(this.handle.fd, buffer, position);
    if (n < buffer.length) throw new NbdRequestError('EIO', `unexpected end of the primary at byte ${position + n}`);
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
    const sealed = this.sealed;
    if (sealed === undefined) return;
    for (let region = first; region < end; region++) {
      // Shipped or given up while this write waited: nothing of it is left to preserve.
      if (this.sealed !== sealed) return;
      if (!sealed.map.has(region) || sealed.shipped.has(region) || sealed.preimages.has(region)) continue;
      for (let busy = sealed.busy.get(region); busy !== undefined; busy = sealed.busy.get(region)) await busy;
      if (this.sealed !== sealed) return;
      if (sealed.shipped.has(region) || sealed.preimages.has(region)) continue;
      const length = regionLength(this.geometry, region);
      if (this.preimagesHeld + length > this.options.preimageLimit) {
        // Out of pre-image memory: wait until the shipper has read this region.
        this.options.hooks?.writeWaits?.(region);
        await new Promise<void>((wake) => (sealed.waiters.get(region) ?? sealed.waiters.set(region, []).get(region)!).push(wake));
        continue;
      }
      const task = (async () => {
        const copy = Buffer.allocUnsafe(length);
        await this.readFully(copy, region * this.geometry.regionSize);
        if (this.sealed !== sealed) return; // released meanwhile (the shipment failed): not needed, not counted
        sealed.preimages.set(region, copy);
        this.preimagesHeld += length;
      })();
      sealed.busy.set(region, task);
      await task;
      if (sealed.busy.get(region) === task) sealed.busy.delete(region);
    }
  }

  private afterWrite(first: number, end: number): void {
    this.openFirstWrite ??= this.options.clock();
    this.open.setRange(first, end);
    for (const recorder of this.recorders) recorder.map.setRange(first, end);
  }
}
