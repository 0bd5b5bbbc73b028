// The shipper of a protected volume: seals the open delta map at one instant and ships it as the
// next delta (a direct shipment), or, while a direct shipment is still trying and during an
// outage, writes each interval's seal to the local spool at once; the spool drains in order
// beside the seals of later intervals. One seal at a time; scans inside protect run with
// shipping paused (exclusive).
//
// Order of the points in time: a direct shipment that is still trying when the next interval
// comes has the delta number N; the seals spooled meanwhile expect N + 1, N + 2, … and take
// spool numbers after the one reserved for it. If it commits, they drain after it; if it fails,
// its own point is written to the spool under its reserved (lower) number, so it ships first,
// also after a crash. If its point cannot be kept, neither can theirs (each is only right on
// top of it): all their regions go out together with the next seal.

import { CdpError } from '../../errors.js';
import { DeltaMap } from '../../model/delta-map.js';
import type { WriterLock } from '../../repo/lock.js';
import type { PitView } from '../../repo/pit-view.js';
import { type Repository, viewForWriting } from '../../repo/repository.js';
import { type WriterTrust, readWriterTrust } from '../../repo/trust.js';
import { DeltaCommitter } from '../delta-committer.js';
import type { DeltaWriter } from '../delta-writer.js';
import type { ProtectedVolumeOptions, ShipResult } from './options.js';
import { type Spool, type SpoolSegment, committedAs, spoolRegions } from './spool.js';
import type { SealedGeneration, WriteTracker } from './write-tracker.js';
import type { ReadResult, RegionPool } from '../../volume/region-pool.js';

/** Sealed regions read and hashed ahead of the one being packed. */
const SHIP_READ_AHEAD = 8;

/** A direct shipment: sealed, and trying to commit as delta `expectedSeq`. */
interface DirectShipment {
  sealed: SealedGeneration;
  sealTime: number;
  expectedSeq: number;
  regions: number;
  /** Its spool number: reserved when a later point in time is spooled while it tries, or when it fails. */
  spoolNumber: number | undefined;
  /** Committed, or failed and its point kept or given up: it no longer holds room or a place in the spool. */
  settled: boolean;
  /** Failed with its content at the seal at hand and room in the spool: it goes there. */
  keepable: boolean;
  done: Promise<ShipResult>;
}

export class Shipper {
  /** The commit path, on top of the newest committed point in time. */
  private committer: DeltaCommitter;
  deltasShipped = 0;
  lastShipError: string | undefined;
  /** A seal being taken (and written to the spool), or a scan running: one at a time. */
  private sealing: Promise<void> | undefined;
  /** The direct shipment still trying, if any (it does not hold `sealing`). */
  private direct: DirectShipment | undefined;
  /** The drain of the spool in progress (it runs beside the seals of later intervals). */
  private draining: Promise<ShipResult> | undefined;
  /** The last direct shipment failed: seal into the spool until it drains. */
  private outage = false;
  /** A shipment failed part-way: re-read the chain's end before the next one. */
  private resync = false;
  private readonly clock: () => number;
  /** The unreadable marks objects last warned about. */
  private warnedUnreadable = '';

  constructor(
    private readonly repo: Repository,
    private readonly lock: WriterLock,
    private readonly tracker: WriteTracker,
    private readonly spool: Spool,
    committer: DeltaCommitter,
    private readonly options: ProtectedVolumeOptions,
    /** Threads that zero-check and hash the sealed regions. */
    private readonly pool: RegionPool,
  ) {
    this.committer = committer;
    this.clock = options.clock ?? Date.now;
    if (spool.length > 0) {
      // Points in time spooled before a restart ship first.
      this.outage = true;
      this.lastShipError = 'points in time spooled before a restart are not shipped yet';
    }
  }

  /** The newest committed point in time. */
  get head(): PitView {
    return this.committer.head;
  }

  /** False until the repository's first point in time is committed: nothing ships before it. */
  get hasBase(): boolean {
    return this.head.seq > 0;
  }

  /**
   * Picks up the chain as it is in the store (a shipment that failed part-way may have landed
   * after all; a scan committed deltas of its own): a fresh index and head.
   */
  private async reload(signal?: AbortSignal): Promise<void> {
    const index = await this.repo.index(signal);
    const head = await viewForWriting(this.repo, index, 'protect', signal);
    this.committer = this.committer.rebase(index, head);
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
  /** The marks as every writer reads them before a delta; unreadable ones are logged once. */
  private async readTrust(signal: AbortSignal): Promise<WriterTrust> {
    const trust = await readWriterTrust(this.options.store, signal);
    const unreadable = trust.unreadable.join(', ');
    if (unreadable !== '' && unreadable !== this.warnedUnreadable) {
      this.options.log?.(
        `trust marks ${unreadable} cannot be read: what they named as damaged is unknown, so changed regions are stored anew instead of deduplicated against earlier packs (see cdp-s3 verify)`,
      );
    }
    this.warnedUnreadable = unreadable;
    return trust;
  }

  private async clearDrl(candidates: DeltaMap): Promise<void> {
    const pending = this.pending();
    try {
      await this.tracker.clearDrl(candidates, pending);
    } finally {
      pending.dispose();
    }
  }

  /**
   * Runs fn holding the sealing turn, taken as soon as it is free: at once (with no await in
   * between) when it is, so a seal happens at the instant it is asked for.
   */
  private async underSealing<T>(fn: () => Promise<T>): Promise<T> {
    while (this.sealing !== undefined) await this.sealing;
    let release!: () => void;
    this.sealing = new Promise<void>((resolve) => (release = resolve));
    try {
      return await fn();
    } finally {
      this.sealing = undefined;
      release();
    }
  }

  /**
   * Seals the open delta map now and ships it as the next delta. Resolves when it is committed
   * (or failed: then it waits in the spool, or its regions go out with the next seal). One seal
   * at a time. While a direct shipment is still trying, and during an outage, the seal goes to
   * the local spool at once, whatever that shipment or the drain of earlier points is doing, so
   * every interval keeps its own point in time.
   */
  async sealAndShip(): Promise<ShipResult> {
    if (!this.hasBase) return undefined; // the writes wait in the open map (and the DRL) for the base
    while (this.sealing !== undefined) await this.sealing;
    if (this.tracker.openIsEmpty && this.spool.length === 0 && this.direct === undefined) return this.draining;
    let started: Promise<ShipResult> | undefined;
    let spooled = true;
    await this.underSealing(async () => {
      if (this.direct !== undefined || this.outage || this.spool.length > 0 || this.draining !== undefined) spooled = await this.spoolSeal();
      else if (!this.tracker.openIsEmpty) started = this.startDirect({ sealingHeld: false });
    });
    let result: ShipResult;
    const inFlight = started ?? this.direct?.done;
    if (inFlight !== undefined) {
      result = await inFlight;
      // Failed: its point and those spooled meanwhile wait in the spool; the next seal drains it.
      if (result === undefined) return undefined;
    }
    let last: ShipResult;
    if (this.spool.length > 0 || this.outage || this.draining !== undefined) last = await this.drain();
    // The spool was full, so this seal did not happen; the shipment or the drain made room.
    if (!spooled && this.spool.length === 0 && !this.outage) return (await this.sealAndShip()) ?? last ?? result;
    return last ?? result;
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
          await this.reload(AbortSignal.timeout(this.shipTimeoutMs));
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
    // A direct shipment still trying settles first (if it fails, it takes the sealing turn).
    for (;;) {
      if (this.sealing !== undefined) await this.sealing;
      else if (this.direct !== undefined) await this.direct.done.catch(() => undefined);
      else break;
    }
    return this.underSealing(async () => {
      // Pending writes go out first through the pre-image path, so they form one instant, and
      // spooled points in time must reach the chain before fn's deltas.
      if (this.outage || this.spool.length > 0 || this.draining !== undefined) {
        await this.spoolSeal();
        await this.drain();
      } else if (!this.tracker.openIsEmpty && this.hasBase) await this.startDirect({ sealingHeld: true });
      if (this.spool.length > 0 || this.outage) {
        throw new CdpError('STORE_RETRYABLE', `the store is still unreachable (${this.lastShipError ?? 'unknown error'}); the scan waits until the spooled points in time are shipped`);
      }
      try {
        return await fn(this.lock);
      } finally {
        await this.reload();
        // Regions the scan committed and nobody wrote since are no longer dirty.
        await this.clearDrl(this.tracker.dirtyInDrl());
      }
    });
  }

  /** Waits for the seal in progress, then seals and ships what is left. */
  async finish(): Promise<void> {
    while (this.sealing !== undefined) await this.sealing;
    await this.sealAndShip();
  }

  /**
   * Seals the open map and ships it directly. It does not hold the sealing turn while it tries,
   * so later intervals are sealed into the spool meanwhile; if it fails, keeping its point takes
   * the turn (`sealingHeld`: the caller holds it already).
   */
  private startDirect(options: { sealingHeld: boolean }): Promise<ShipResult> {
    const sealed = this.tracker.seal({ keepAfterRead: true });
    const flight: DirectShipment = {
      sealed,
      sealTime: Math.max(this.clock(), this.head.time + 1),
      expectedSeq: this.head.seq + 1,
      regions: sealed.map.count(),
      spoolNumber: undefined,
      settled: false,
      keepable: false,
      done: undefined!,
    };
    this.direct = flight;
    flight.done = (async () => {
      try {
        const shipped = await this.shipDirect(flight);
        if (shipped === undefined) {
          if (options.sealingHeld) await this.keepFailedPoint(flight);
          else await this.underSealing(() => this.keepFailedPoint(flight));
        }
        return shipped;
      } finally {
        flight.settled = true;
        this.tracker.release(sealed);
        if (this.direct === flight) this.direct = undefined;
      }
    })();
    return flight.done;
  }

  /**
   * Seals the open map into the local spool now, as the point in time after those already
   * spooled (and after the direct shipment still trying). False when the spool has no room for
   * it: then the open map keeps growing (later intervals coalesce).
   */
  private async spoolSeal(): Promise<boolean> {
    if (this.tracker.openIsEmpty) return true;
    const flight = this.direct !== undefined && !this.direct.settled ? this.direct : undefined;
    // Room is kept for the shipment still trying: if it fails, its point goes to the spool too.
    if (!this.spool.hasRoom(this.tracker.openRegions, flight?.regions ?? 0)) return false;
    if (flight !== undefined) flight.spoolNumber ??= this.spool.reserveNumber();
    const sealTime = Math.max(this.clock(), (this.spool.segments.at(-1)?.sealTime ?? 0) + 1, this.head.time + 1, (flight?.sealTime ?? 0) + 1);
    const expectedSeq = this.spool.nextSeq(flight?.expectedSeq ?? this.head.seq);
    const sealed = this.tracker.seal({ keepAfterRead: false });
    try {
      const segment = await this.spool.write(
        sealed.map.regions(),
        (region) => this.tracker.readSealed(sealed, region),
        { expectedSeq, sealTime, firstWrite: sealed.firstWrite },
        (region) => this.tracker.changedBlocks(sealed, region),
      );
      if (segment === undefined) this.tracker.reopen(sealed);
    } finally {
      this.tracker.release(sealed);
    }
    return true;
  }

  /**
   * A direct shipment failed: its point in time goes to the spool under its reserved number,
   * before the points spooled while it was trying. When it cannot (a region it had read was
   * written again with no pre-image memory to keep its content, no room, the local disk failed),
   * those cannot ship as their own points either: they are dropped, and all their writes go out
   * with the next seal (the DRL and the primary hold them).
   */
  private async keepFailedPoint(flight: DirectShipment): Promise<void> {
    const { sealed } = flight;
    try {
      if (flight.keepable) {
        const number = flight.spoolNumber ?? this.spool.reserveNumber();
        const point = { expectedSeq: flight.expectedSeq, sealTime: flight.sealTime, firstWrite: sealed.firstWrite, number };
        const blocks = (region: number): Uint8Array | undefined => this.tracker.changedBlocks(sealed, region);
        if ((await this.spool.write(sealed.map.regions(), (region) => this.tracker.readSealed(sealed, region), point, blocks)) !== undefined) return;
      }
      const later = await this.spool.dropAll();
      for (const segment of later) this.tracker.reopenRegions(segment.regions, segment.firstWrite);
      this.tracker.reopen(sealed);
      const why = sealed.lost ? 'a region it had read was written again and the pre-image memory was full' : flight.keepable ? 'the local spool failed' : 'the spool is full';
      const others = later.length === 0 ? '' : ` and the ${later.length} sealed while it was trying`;
      this.options.log?.(`the point in time of the failed shipment${others} could not be kept in the spool (${why}): their writes go out with the next point in time`);
    } finally {
      flight.settled = true;
    }
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
        if (segment.expectedSeq <= this.head.seq && (await committedAs(this.repo, segment, signal))) {
          await this.committedFromSpool(segment);
          this.options.log?.(`point in time ${segment.expectedSeq} from the spool was committed already (a shipment reported as failed had landed): not shipped again`);
          last = { seq: segment.expectedSeq, regions: segment.regions.length };
          continue;
        }
        if (segment.expectedSeq !== this.head.seq + 1) await this.spool.renumber(this.head.seq + 1);
      } catch (error) {
        this.lastShipError = (error as Error).message;
        this.resync = true;
        return last;
      }
      let writer: DeltaWriter | undefined;
      try {
        await this.committer.refreshHead(signal);
        writer = this.committer.begin({ signal, trust: await this.readTrust(signal) });
        for await (const { region, bytes, digest, blocks } of spoolRegions(segment, this.repo.identity)) {
          await writer.apply(region, digest === undefined ? { status: 'zero' } : { status: 'changed', digest, bytes }, blocks);
        }
        // The point is the seal's instant, never at or before the head's (the committer sees to it).
        const committed = await this.committer.commit(writer, 'host', Math.min(this.head.time, segment.sealTime), { end: segment.sealTime, signal });
        this.reportSpanError(committed.commit.spanError);
        await this.committedFromSpool(segment);
        this.options.log?.(`point in time ${committed.seq} (${new Date(committed.end).toISOString()}) shipped from the spool: ${segment.regions.length} regions`);
        last = { seq: committed.seq, regions: segment.regions.length };
      } catch (error) {
        this.lastShipError = (error as Error).message;
        this.resync = true;
        return last;
      } finally {
        writer?.changed.dispose();
      }
    }
    this.outage = false;
    return last;
  }

  /** A span due at a committed point was not written: later reads fold its parts, the next commit writes it. */
  private reportSpanError(spanError: string | undefined): void {
    if (spanError !== undefined) this.options.log?.(`a span was not written (${spanError}); the next point in time writes it`);
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

  /**
   * Reads each sealed region as of the seal, zero-checks and hashes it (on the pool's threads, a
   * few regions at once, so neither the NBD server nor the next reads wait for it) and
   * applies them to `writer` in order, with the blocks written since each region's last version.
   * Every read has settled when this returns or throws: a failed shipment's point is read again
   * for the spool, and no read of this one may still mark a region read after that.
   */
  private async applySealed(sealed: SealedGeneration, writer: DeltaWriter): Promise<void> {
    // Region buffers go to a hashing thread and come back (no copy), and are reused from one
    // region to the next (a fresh megabyte per region kept the garbage collector busy); a
    // pre-image is the tracker's own, so a copy of it goes.
    const spare: Uint8Array[] = [];
    type Prepared = { region: number; result: ReadResult; buffer: Uint8Array | undefined };
    const prepare = async (region: number): Promise<Prepared> => {
      const buffer = spare.pop() ?? new Uint8Array(this.repo.geometry.regionSize);
      const bytes = await this.tracker.readSealed(sealed, region, buffer);
      const own = bytes.buffer === buffer.buffer;
      if (!own) spare.push(buffer);
      const hashed = await this.pool.digest(bytes, own);
      const back = own ? new Uint8Array(hashed.bytes.buffer) : undefined;
      if (hashed.digest === undefined) return { region, result: { status: 'zero' }, buffer: back };
      return { region, result: { status: 'changed', digest: hashed.digest, bytes: hashed.bytes }, buffer: back };
    };
    const ahead: Array<Promise<Prepared>> = [];
    const applyNext = async (): Promise<void> => {
      const { region, result, buffer } = await ahead.shift()!;
      await writer.apply(region, result, this.tracker.changedBlocks(sealed, region));
      if (buffer !== undefined) spare.push(buffer); // apply copied what it keeps
    };
    try {
      for (const region of sealed.map.regions()) {
        const next = prepare(region);
        next.catch(() => {}); // awaited in turn below
        ahead.push(next);
        if (ahead.length >= SHIP_READ_AHEAD) await applyNext();
      }
      while (ahead.length > 0) await applyNext();
    } finally {
      await Promise.allSettled(ahead);
    }
  }

  /** Ships a sealed point in time as the next delta. Undefined when it failed (the caller keeps its point). */
  private async shipDirect(flight: DirectShipment): Promise<ShipResult> {
    const { sealed, sealTime } = flight;
    const start = this.head.time;
    // A store that hangs must not stall protection: a shipment that takes too long fails. (Not
    // the volume's abort signal: that means "stop", and stopping ships a last delta.)
    const signal = AbortSignal.timeout(this.shipTimeoutMs);
    let writer: DeltaWriter | undefined;
    try {
      await this.committer.refreshHead(signal);
      writer = this.committer.begin({ trust: await this.readTrust(signal), signal });
      if (writer.seq !== flight.expectedSeq) throw new CdpError('STORE_EXISTS', `the chain moved on to ${writer.seq - 1} while point ${flight.expectedSeq} was sealed`);
      await this.applySealed(sealed, writer);
      const committed = await this.committer.commit(writer, 'host', Math.min(start, sealTime), { end: sealTime, signal });
      this.reportSpanError(committed.commit.spanError);
      this.deltasShipped++;
      this.lastShipError = undefined;
      flight.settled = true;
      // Clear the DRL bits of what is committed, except regions written again since the seal.
      this.tracker.shippedAll(sealed); // shipped: no longer pending
      await this.clearDrl(sealed.map.clone());
      this.options.log?.(`point in time ${committed.seq} (${new Date(committed.end).toISOString()}): ${flight.regions} regions (${committed.regionsPatched} as patches), ${writer.bytesStored} bytes stored`);
      return { seq: committed.seq, regions: flight.regions };
    } catch (error) {
      this.lastShipError = (error as Error).message;
      this.outage = true;
      this.resync = true;
      this.options.log?.(`shipping failed, the next points in time go to the local spool until the store is back: ${this.lastShipError}`);
      // Its point waits in the spool too if its content at the seal is at hand and there is room.
      // readAgain, before any await: from now on writes to regions already read save pre-images
      // again, since the segment reads every region anew and must see its content at the seal.
      flight.keepable = this.spool.hasRoom(flight.regions) && this.tracker.readAgain(sealed);
      return undefined;
    } finally {
      writer?.changed.dispose();
    }
  }
}
