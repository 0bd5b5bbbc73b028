// The shipper of a protected volume: seals the open delta map at one instant and ships it as the
// next delta (shipDirect), or, during an outage, writes it to the local spool at once and drains
// the spool in order beside the seals of later intervals. One seal at a time; scans inside
// protect run with shipping paused (exclusive).

import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { CdpError } from '../../errors.js';
import { DeltaMap } from '../../model/delta-map.js';
import type { PitMap } from '../../model/pit-map.js';
import type { WriterLock } from '../../repo/lock.js';
import type { Repository } from '../../repo/repository.js';
import { readTrust } from '../../repo/trust.js';
import { kernels } from '../../kernels/index.js';
import { DeltaWriter } from '../delta-writer.js';
import type { ProtectedVolumeOptions, ShipResult } from './options.js';
import { type Spool, type SpoolSegment, committedAs, spoolRegions } from './spool.js';
import type { SealedGeneration, WriteTracker } from './write-tracker.js';

export class Shipper {
  /** The newest committed point in time. */
  pit: PitMap;
  deltasShipped = 0;
  lastShipError: string | undefined;
  private shipping: Promise<void> | undefined;
  /** The drain of the spool in progress (it runs beside the seals of later intervals). */
  private draining: Promise<ShipResult> | undefined;
  /** The last direct shipment failed: seal into the spool until it drains. */
  private outage = false;
  /** A shipment failed part-way: re-read the chain's end before the next one. */
  private resync = false;
  private readonly clock: () => number;

  constructor(
    private readonly repo: Repository,
    private readonly lock: WriterLock,
    private readonly tracker: WriteTracker,
    private readonly spool: Spool,
    pit: PitMap,
    private readonly sourcePath: string,
    private readonly options: ProtectedVolumeOptions,
  ) {
    this.pit = pit;
    this.clock = options.clock ?? Date.now;
    if (spool.length > 0) {
      // Points in time spooled before a restart ship first.
      this.outage = true;
      this.lastShipError = 'points in time spooled before a restart are not shipped yet';
    }
  }

  /** False until the repository's first point in time is committed: nothing ships before it. */
  get hasBase(): boolean {
    return this.pit.seq > 0;
  }

  private get shipTimeoutMs(): number {
    return this.options.shipTimeoutMs ?? 10 * 60_000;
  }

  /** Regions written and not committed: open, sealed and spooled (a copy). */
  pending(): DeltaMap {
    const pending = this.tracker.unshipped();
    for (const region of this.spool.regions()) pending.set(region);
    return pending;
  }

  /** DRL bits that can go: `candidates` less what is unshipped or being written. */
  private async clearDrl(candidates: DeltaMap): Promise<void> {
    const pending = this.pending();
    try {
      await this.tracker.clearDrl(candidates, pending);
    } finally {
      pending.dispose();
    }
  }

  /**
   * Seals the open delta map now and ships it as the next delta. Resolves when it is committed
   * (or failed: then it waits in the spool, or its regions go out with the next seal). One seal
   * at a time; during an outage the seal goes to the local spool at once, whatever the drain of
   * earlier points is doing, so every interval keeps its own point in time.
   */
  async sealAndShip(): Promise<ShipResult> {
    if (!this.hasBase) return undefined; // the writes wait in the open map (and the DRL) for the base
    while (this.shipping !== undefined) await this.shipping.catch(() => undefined);
    if (this.tracker.openIsEmpty && this.spool.length === 0) return this.draining;
    let result: ShipResult;
    let drain: Promise<ShipResult> | undefined;
    let spooled = true;
    this.shipping = (async () => {
      if (this.outage || this.spool.length > 0 || this.draining !== undefined) {
        spooled = await this.spoolSeal();
        drain = this.drain();
      } else {
        result = await this.shipDirect();
      }
    })().finally(() => {
      this.shipping = undefined;
    });
    await this.shipping;
    if (drain === undefined) return result;
    const last = await drain;
    // The spool was full, so this seal did not happen; the drain made room or ended the outage.
    if (!spooled && this.spool.length === 0 && !this.outage) return (await this.sealAndShip()) ?? last;
    return last;
  }

  /**
   * Drains the spool in the background (one drain at a time): spooled points in time ship in
   * order, and the outage ends when the spool is empty.
   */
  private drain(): Promise<ShipResult> {
    this.draining ??= (async () => {
      if (this.resync) {
        // A shipment failed part-way: its delta may have landed after all. Pick up the chain as it is.
        try {
          const seqs = await this.repo.deltaSeqs(AbortSignal.timeout(this.shipTimeoutMs));
          if ((seqs.at(-1) ?? 0) !== this.pit.seq) this.pit = await this.repo.loadPit(seqs.at(-1) ?? 0);
          this.resync = false;
        } catch (error) {
          this.lastShipError = (error as Error).message;
          return undefined;
        }
      }
      return this.drainSpool();
    })().finally(() => {
      this.draining = undefined;
    });
    return this.draining;
  }

  /**
   * Runs fn with shipping paused (a scan inside protect commits deltas of its own), then picks
   * up the chain as fn left it.
   */
  async exclusive<T>(fn: (lock: WriterLock) => Promise<T>): Promise<T> {
    while (this.shipping !== undefined) await this.shipping.catch(() => undefined);
    let result: T;
    this.shipping = (async () => {
      // Pending writes go out first through the pre-image path, so they form one instant, and
      // spooled points in time must reach the chain before fn's deltas.
      if (this.outage || this.spool.length > 0 || this.draining !== undefined) {
        await this.spoolSeal();
        await this.drain();
      } else if (!this.tracker.openIsEmpty && this.hasBase) await this.shipDirect();
      if (this.spool.length > 0 || this.outage) {
        throw new CdpError('STORE_RETRYABLE', `the store is still unreachable (${this.lastShipError ?? 'unknown error'}); the scan waits until the spooled points in time are shipped`);
      }
      try {
        result = await fn(this.lock);
      } finally {
        const seqs = await this.repo.deltaSeqs();
        this.pit = await this.repo.loadPit(seqs.at(-1) ?? 0);
        // Regions the scan committed and nobody wrote since are no longer dirty.
        await this.clearDrl(this.tracker.dirtyInDrl());
      }
    })().finally(() => {
      this.shipping = undefined;
    });
    await this.shipping;
    return result!;
  }

  /** Waits for the shipment in progress, then seals and ships what is left. */
  async finish(): Promise<void> {
    while (this.shipping !== undefined) await this.shipping.catch(() => undefined);
    await this.sealAndShip();
  }

  /**
   * Seals the open map into the local spool now. False when the spool has no room for it: then
   * the open map keeps growing (later intervals coalesce).
   */
  private async spoolSeal(): Promise<boolean> {
    if (this.tracker.openIsEmpty) return true;
    if (!this.spool.hasRoom(this.tracker.openRegions)) return false;
    const sealTime = Math.max(this.clock(), (this.spool.segments.at(-1)?.sealTime ?? 0) + 1, this.pit.time + 1);
    const sealed = this.tracker.seal();
    try {
      if (!(await this.writeSegment(sealed, sealTime))) this.tracker.reopen(sealed);
    } finally {
      this.tracker.release(sealed);
    }
    return true;
  }

  /**
   * Writes the sealed regions' content at their seal into a spool segment that becomes the next
   * point in time after those already spooled. False when the local disk failed.
   */
  private async writeSegment(sealed: SealedGeneration, sealTime: number): Promise<boolean> {
    const segment = await this.spool.write(sealed.map.regions(), (region) => this.tracker.readSealed(sealed, region), {
      expectedSeq: this.pit.seq + this.spool.length + 1,
      sealTime,
      firstWrite: sealed.firstWrite,
    });
    return segment !== undefined;
  }

  /**
   * Ships spooled points in time in order; stops at the first failure. Returns the last shipped.
   * A segment whose delta is in the chain already (its shipment failed, but the store had taken
   * it) is not shipped again; when the chain has moved past the numbers the segments expect,
   * they are renumbered to follow it.
   */
  private async drainSpool(): Promise<ShipResult> {
    let last: ShipResult;
    while (this.spool.length > 0) {
      const segment = this.spool.segments[0]!;
      const signal = AbortSignal.timeout(this.shipTimeoutMs);
      try {
        if (segment.expectedSeq <= this.pit.seq && (await committedAs(this.repo, segment, signal))) {
          await this.committedFromSpool(segment);
          this.options.log?.(`point in time ${segment.expectedSeq} from the spool was committed already (a shipment reported as failed had landed): not shipped again`);
          last = { seq: segment.expectedSeq, regions: segment.regions.length };
          continue;
        }
        if (segment.expectedSeq !== this.pit.seq + 1) await this.spool.renumber(this.pit.seq + 1);
      } catch (error) {
        this.lastShipError = (error as Error).message;
        this.resync = true;
        return last;
      }
      const working = this.pit.clone();
      const writer = new DeltaWriter(this.repo, working, this.pit.seq + 1, { signal });
      try {
        for await (const { region, bytes, digest } of spoolRegions(segment)) {
          await writer.apply(region, digest === undefined ? { status: 'zero' } : { status: 'changed', digest, bytes });
        }
        await writer.finish();
        const delta = writer.delta('host', Math.min(this.pit.time, segment.sealTime), Math.max(segment.sealTime, this.pit.time + 1));
        delta.source = { host: hostname(), path: this.sourcePath };
        working.seq = delta.seq;
        working.time = delta.end;
        this.lock.check();
        await this.repo.commitDelta(delta, working, signal);
        this.pit = working;
        await this.committedFromSpool(segment);
        this.options.log?.(`point in time ${delta.seq} (${new Date(delta.end).toISOString()}) shipped from the spool: ${segment.regions.length} regions`);
        last = { seq: delta.seq, regions: segment.regions.length };
      } catch (error) {
        this.lastShipError = (error as Error).message;
        this.resync = true;
        return last;
      } finally {
        writer.changed.dispose();
      }
    }
    this.outage = false;
    return last;
  }

  /** The first spooled segment is in the chain: it goes, with the DRL bits nothing else needs. */
  private async committedFromSpool(segment: SpoolSegment): Promise<void> {
    this.deltasShipped++;
    this.lastShipError = undefined;
    await this.spool.shift();
    const clear = new DeltaMap(this.repo.geometry.regionCount);
    for (const region of segment.regions) clear.set(region);
    await this.clearDrl(clear);
  }

  private async shipDirect(): Promise<ShipResult> {
    const sealTime = Math.max(this.clock(), this.pit.time + 1);
    const sealed = this.tracker.seal();
    const start = this.pit.time;
    const working = this.pit.clone();
    // No abort signal here: the signal means "stop", and stopping ships a last delta.
    const trust = await readTrust(this.options.store).catch(() => ({ damaged: new Set<string>() }));
    // A store that hangs must not stall protection: a shipment that takes too long fails.
    const signal = AbortSignal.timeout(this.shipTimeoutMs);
    const writer = new DeltaWriter(this.repo, working, this.pit.seq + 1, { damaged: trust.damaged, signal });
    const k = kernels();
    try {
      for (const region of sealed.map.regions()) {
        const bytes = await this.tracker.readSealed(sealed, region);
        if (k.isZero(bytes)) await writer.apply(region, { status: 'zero' });
        else await writer.apply(region, { status: 'changed', digest: createHash('sha256').update(bytes).digest(), bytes });
      }
      await writer.finish();
      const delta = writer.delta('host', Math.min(start, sealTime), sealTime);
      delta.source = { host: hostname(), path: this.sourcePath };
      working.seq = delta.seq;
      working.time = sealTime;
      this.lock.check();
      await this.repo.commitDelta(delta, working, signal);
      this.pit = working;
      this.deltasShipped++;
      this.lastShipError = undefined;
      // Clear the DRL bits of what is committed, except regions written again since the seal.
      this.tracker.shippedAll(sealed); // shipped: no longer pending
      await this.clearDrl(sealed.map.clone());
      this.options.log?.(`point in time ${delta.seq} (${new Date(sealTime).toISOString()}): ${sealed.map.count()} regions, ${writer.bytesStored} bytes stored`);
      return { seq: delta.seq, regions: sealed.map.count() };
    } catch (error) {
      this.lastShipError = (error as Error).message;
      this.outage = true;
      this.resync = true;
      this.options.log?.(`shipping failed, the next points in time go to the local spool until the store is back: ${this.lastShipError}`);
      // This point in time waits in the spool too, if its content at the seal is still at hand:
      // a region the shipper read is not preserved from later writes, so one written since
      // makes it go out with the next seal instead (the writes are in the DRL and on the primary).
      const rewritten = this.tracker.rewrittenSinceRead(sealed);
      const intact = rewritten.isEmpty();
      rewritten.dispose();
      if (intact) this.tracker.readAgain(sealed);
      if (!intact || !this.spool.hasRoom(sealed.map.count()) || !(await this.writeSegment(sealed, sealTime))) this.tracker.reopen(sealed);
      return undefined;
    } finally {
      writer.changed.dispose();
      this.tracker.release(sealed);
    }
  }
}
