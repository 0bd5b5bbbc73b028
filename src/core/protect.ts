// protect: continuous data protection through an NBD front end. Every write to the protected
// disk passes through ProtectedVolume, so cdp-s3 knows exactly which regions changed and when:
//
//  - a write marks the dirty region log (durably, before the write itself) for regions not yet
//    marked, is applied to the primary, and is recorded in the open delta map;
//  - every interval the open delta map is sealed at one instant and shipped as a delta. The
//    shipped content of each region is exactly its content at the seal instant: a write to a
//    sealed region that is not shipped yet first saves the region's pre-image (bounded memory;
//    past the bound the write waits for the region to be shipped);
//  - after the delta commits, the DRL bits of its regions clear (unless written again);
//  - if the store fails, the sealed point in time waits in a local spool, and so does every
//    interval's point from then on, until the drain has shipped them all in order; writes keep
//    being served; the lag (oldest unshipped write) is visible;
//  - on start, regions left in the DRL by a crash are shipped with the first seal (claims 5, 6).

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { type FileHandle, mkdir, open, readdir, readFile, realpath, rm, stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { hostname } from 'node:os';
import { CdpError, InvalidArgumentError, NoPointInTimeError } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import { DIGEST_BYTES, type Geometry, type PitMap, regionLength } from '../model/pit-map.js';
import { type WriterLock, acquireWriterLock, forceUnlock } from '../repo/lock.js';
import { FieldReader, openEnvelope, sealEnvelope } from '../repo/envelope.js';
import { Repository, loadNewestForWriting } from '../repo/repository.js';
import { readTrust } from '../repo/trust.js';
import { NbdRequestError, type NbdExport } from '../nbd/types.js';
import { FsStore } from '../store/fs.js';
import type { ObjectStore } from '../store/types.js';
import type { ChangeRecorder, ChangeSource } from '../volume/changes.js';
import { DirtyRegionLog } from '../volume/dirty-region-log.js';
import { preadFully, pwriteFully, pwritevFully } from '../volume/positional-io.js';
import { openVolume } from '../volume/source.js';
import { kernels } from '../kernels/index.js';
import { DeltaWriter } from './delta-writer.js';
import type { Progress } from './progress.js';
import { type ScanHooks, type ScanResult, scan } from './scan.js';
import { NbdServer } from '../nbd/server.js';

const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

export interface ProtectStatus {
  /** Newest committed point in time. */
  seq: number;
  time: string | undefined;
  /** Milliseconds since the oldest write not yet in a committed delta (0 when all shipped). */
  lagMs: number;
  oldestUnshippedWrite: string | undefined;
  /** Regions in the dirty region log. */
  drlRegions: number;
  /** Bytes of pre-images held for sealed, unshipped regions. */
  preimageBytes: number;
  /** Points in time sealed during a store outage and kept in the local spool, and their bytes. */
  spooledPoints: number;
  spoolBytes: number;
  /** Regions written and not yet committed. */
  unshippedRegions: number;
  deltasShipped: number;
  lastShipError: string | undefined;
  lastScan: unknown;
  /** While the repository has no base yet: the base being taken (regions of its phase done). */
  base: { phase: string; regionsDone: number; regionsTotal: number } | undefined;
}

export interface ProtectedVolumeOptions {
  store: ObjectStore;
  source: string;
  /** The dirty region log file; created if missing. */
  drl: string;
  /**
   * While the store is unreachable, each interval's sealed content is kept in a local spool
   * (this directory, default the DRL's path + ".spool") up to spoolBytes (default 1 GiB), so
   * every point in time of the outage is shipped when the store is back. A full spool makes
   * later intervals coalesce into one.
   */
  spoolDir?: string;
  spoolBytes?: number;
  /** A shipment that takes longer fails (and the outage path takes over). Default 10 minutes. */
  shipTimeoutMs?: number;
  /** Bytes of pre-images kept in memory before writes to unshipped regions wait. Default 256 MiB. */
  preimageBytes?: number;
  /** Export name(s). */
  name?: string;
  forceUnlock?: boolean;
  lockTtlMs?: number;
  clock?: () => number;
  log?: (line: string) => void;
  signal?: AbortSignal;
  /** Where tests interleave writes with the shipper deterministically. */
  hooks?: ProtectHooks;
}

export interface ProtectHooks {
  /** The shipper is about to read a sealed region (for a delta or a spool segment). */
  beforeShipRead?(region: number): Promise<void> | void;
  /** A write waits for the shipper to read this sealed region: the pre-image memory is full. */
  writeWaits?(region: number): void;
}

/** One point in time sealed during an outage: its regions' bytes in a local file. */
interface SpoolSegment {
  /** The delta it becomes: segments ship in order and nothing else commits while any wait. */
  expectedSeq: number;
  sealTime: number;
  regions: number[];
  offsets: number[];
  lengths: number[];
  file: string;
  bytes: number;
  firstWrite: number | undefined;
}

interface Sealed {
  map: DeltaMap;
  shipped: DeltaMap;
  preimages: Map<number, Uint8Array>;
  /** Per region: the read or pre-image copy in progress. */
  busy: Map<number, Promise<void>>;
  /** Per region: resolves when the shipper has read it. */
  waiters: Map<number, Array<() => void>>;
  firstWrite: number | undefined;
}

/** The protected primary: an NBD export that tracks every write, and the shipper of deltas. */
export class ProtectedVolume implements NbdExport, ChangeSource {
  readonly readOnly = false;
  readonly name: string;
  readonly size: number;
  readonly geometry: Geometry;
  private open: DeltaMap;
  private openFirstWrite: number | undefined;
  private sealed: Sealed | undefined;
  private readonly drlMarked: DeltaMap;
  private drlPending: Promise<void> = Promise.resolve();
  private readonly recorders = new Set<{ map: DeltaMap }>();
  private preimageBytes = 0;
  /** Regions with writes in progress (between beforeWrite and afterWrite), with their count. */
  private readonly writing = new Map<number, number>();
  private shipping: Promise<void> | undefined;
  /** The drain of the spool in progress (it runs beside the seals of later intervals). */
  private draining: Promise<{ seq: number; regions: number } | undefined> | undefined;
  /** The last direct shipment failed: seal into the spool until it drains. */
  private outage = false;
  /** A shipment failed part-way: re-read the chain's end before the next one. */
  private resync = false;
  private readonly spool: SpoolSegment[] = [];
  private spoolUsed = 0;
  private spoolCounter = 0;
  private deltasShipped = 0;
  private lastShipError: string | undefined;
  lastScan: unknown;
  private baseProgress = { phase: 'waiting', bytesDone: 0, bytesTotal: 0 };
  private readonly clock: () => number;

  private constructor(
    private readonly repo: Repository,
    private readonly handle: FileHandle,
    private readonly drl: DirtyRegionLog,
    private readonly lock: WriterLock,
    private pit: PitMap,
    private readonly sourcePath: string,
    private readonly options: ProtectedVolumeOptions,
  ) {
    this.geometry = repo.geometry;
    this.size = repo.geometry.volumeSize;
    this.name = options.name ?? '';
    this.clock = options.clock ?? Date.now;
    // After a crash, the DRL lists what was written and not committed: ship it with the first seal.
    this.open = drl.dirty();
    this.drlMarked = this.open.clone();
    if (!this.open.isEmpty()) this.openFirstWrite = this.clock();
  }

  static async open(options: ProtectedVolumeOptions): Promise<ProtectedVolume> {
    const repo = await Repository.open(options.store, options.signal);
    const g = repo.geometry;
    // openVolume refuses what is not a disk (a FIFO, a socket, a character device) before opening it.
    const { handle, size: actual } = await openVolume(options.source, 'write');
    let drl: DirtyRegionLog | undefined;
    let lock: WriterLock | undefined;
    try {
      if (actual !== g.volumeSize) {
        throw new CdpError('VOLUME_MISMATCH', `${options.source} is ${actual} bytes but the repository's volume is ${g.volumeSize} bytes: protect the disk this repository holds`);
      }
      // Before anything is created: a spool directory that is not this volume's own is refused.
      await checkSpoolDir(spoolDirOf(options), options.drl, repo.config.volumeId);
      drl = await DirtyRegionLog.openOrCreate(options.drl, { volumeId: repo.config.volumeId, regionCount: g.regionCount, regionSize: g.regionSize });
      if (options.forceUnlock === true) await forceUnlock(options.store, { signal: options.signal });
      lock = await acquireWriterLock(options.store, { command: 'protect', ttlMs: options.lockTtlMs, signal: options.signal });
      const chain = await repo.listChain(options.signal);
      // No base yet (latest 0): protect serves at once and takes the base while serving (takeBase).
      const latest = chain.latest;
      const pit = await loadNewestForWriting(repo, chain, 'protect', options.signal);
      if (chain.missing.length > 0) {
        options.log?.(`the chain is missing deltas ${chain.missing.join(', ')}; new points in time go after the newest (a checkpoint past the gap stands in for it), never into the gap (see cdp-s3 log and verify)`);
      }
      // Points in time spooled during an outage before a crash ship first, in order; their
      // regions are in the DRL too, so whatever cannot be recovered still goes out coalesced.
      const spool = await recoverSpool(repo, spoolDirOf(options), latest, options.log);
      if (drl.created && latest > 0) {
        options.log?.(`created dirty region log ${options.drl}: writes made to ${options.source} outside cdp-s3 since the last backup are not tracked; run cdp-s3 scan to find them`);
      }
      const volume = new ProtectedVolume(repo, handle, drl, lock, pit, await realpath(options.source), options);
      volume.adoptSpool(spool);
      return volume;
    } catch (error) {
      await lock?.release().catch(() => undefined);
      await drl?.close();
      await handle.close();
      throw error;
    }
  }

  /** Takes over segments recovered from a spool a crash left behind: shipping starts with them. */
  private adoptSpool(segments: SpoolSegment[]): void {
    if (segments.length === 0) return;
    this.spool.push(...segments);
    for (const segment of segments) this.spoolUsed += segment.bytes;
    this.spoolCounter = Math.max(...segments.map((segment) => spoolNumber(segment.file)));
    this.outage = true;
    this.lastShipError = 'points in time spooled before a restart are not shipped yet';
  }

  private get spoolDir(): string {
    return spoolDirOf(this.options);
  }

  status(): ProtectStatus {
    const oldest = this.spool[0]?.firstWrite ?? this.sealed?.firstWrite ?? this.openFirstWrite;
    return {
      seq: this.pit.seq,
      time: this.pit.time === 0 ? undefined : new Date(this.pit.time).toISOString(),
      lagMs: oldest === undefined ? 0 : this.clock() - oldest,
      oldestUnshippedWrite: oldest === undefined ? undefined : new Date(oldest).toISOString(),
      drlRegions: this.drl.count(),
      preimageBytes: this.preimageBytes,
      spooledPoints: this.spool.length,
      spoolBytes: this.spoolUsed,
      unshippedRegions: this.unshippedCount(),
      deltasShipped: this.deltasShipped,
      lastShipError: this.lastShipError,
      lastScan: this.lastScan,
      base: this.hasBase
        ? undefined
        : {
            phase: this.baseProgress.phase,
            regionsDone: Math.floor(this.baseProgress.bytesDone / this.geometry.regionSize),
            regionsTotal: Math.ceil(this.baseProgress.bytesTotal / this.geometry.regionSize),
          },
    };
  }

  /** False until the repository's first point in time is committed: nothing ships before it. */
  get hasBase(): boolean {
    return this.pit.seq > 0;
  }

  /**
   * Takes the repository's base while the volume is served: the scan's method (claims 1–11)
   * against the empty chain, with this volume as the live change source, so regions the host
   * writes meanwhile are left to the next point in time. Nothing else commits until it has.
   */
  async takeBase(options: { signal?: AbortSignal; hooks?: ScanHooks } = {}): Promise<ScanResult> {
    const progress: Progress = {
      phase: (phase, totalBytes) => (this.baseProgress = { phase, bytesDone: 0, bytesTotal: totalBytes }),
      advance: (bytes) => void (this.baseProgress.bytesDone += bytes),
      done: () => undefined,
    };
    return this.exclusive((lock) =>
      scan({ store: this.options.store, source: this.options.source, changes: this, heldLock: lock, base: true, progress, signal: options.signal, hooks: options.hooks }),
    );
  }

  private get shipTimeoutMs(): number {
    return this.options.shipTimeoutMs ?? 10 * 60_000;
  }

  private unshippedCount(): number {
    const pending = this.pending();
    const n = pending.count();
    pending.dispose();
    return n;
  }

  /** Regions that writes are changing right now (not yet in the open map). */
  private inFlight(): DeltaMap {
    const map = new DeltaMap(this.geometry.regionCount);
    for (const region of this.writing.keys()) map.set(region);
    return map;
  }

  /** DRL bits that can go: `candidates` less what is unshipped or being written. */
  private async clearDrl(candidates: DeltaMap): Promise<void> {
    const pending = this.pending();
    const writing = this.inFlight();
    candidates.subtract(pending).subtract(writing);
    pending.dispose();
    writing.dispose();
    this.drlMarked.subtract(candidates);
    await this.drl.clear(candidates);
    candidates.dispose();
  }

  // ---- NbdExport -------------------------------------------------------------------------

  async read(offset: number, length: number): Promise<Uint8Array> {
    const bytes = Buffer.allocUnsafe(length);
    await this.readFully(bytes, offset);
    return bytes;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    await this.readFully(target, offset);
  }

  /** A write whose payload arrived in pieces: written with one writev, no copy. */
  async writev(offset: number, chunks: Uint8Array[], fua: boolean): Promise<void> {
    let length = 0;
    for (const chunk of chunks) length += chunk.length;
    await this.tracked(offset, length, fua, () => pwritevFully(this.handle.fd, chunks, offset));
  }

  async write(offset: number, bytes: Uint8Array, fua: boolean): Promise<void> {
    await this.tracked(offset, bytes.length, fua, () => pwriteFully(this.handle.fd, bytes, offset));
  }

  async flush(): Promise<void> {
    await this.drlPending;
    await this.handle.datasync();
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.writeZeroes(offset, length, fua);
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    await this.tracked(offset, length, fua, async () => {
      for (let at = offset; at < offset + length; at += ZERO_CHUNK.length) {
        await pwriteFully(this.handle.fd, ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, offset + length - at)), at);
      }
    });
  }

  /**
   * Every change to the primary goes through here: the regions [first, end) it touches are
   * counted as being written, marked in the DRL (durably, before the data) and their sealed,
   * unshipped pre-images saved; then `apply` changes the primary, and the regions join the open
   * delta map. Per-write work is proportional to the regions touched, never to the volume.
   */
  private async tracked(offset: number, length: number, fua: boolean, apply: () => Promise<void>): Promise<void> {
    if (length === 0) return;
    if (offset < 0 || offset + length > this.size) throw new NbdRequestError('EINVAL', `range ${offset}+${length} is past the end`);
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

  // ---- ChangeSource (for scans inside protect) --------------------------------------------

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

  pending(): DeltaMap {
    const pending = this.open.clone();
    if (this.sealed !== undefined) pending.union(this.sealed.map);
    for (const segment of this.spool) for (const region of segment.regions) pending.set(region);
    return pending;
  }

  committed(regions: DeltaMap): void {
    this.open.subtract(regions);
    if (this.open.isEmpty()) this.openFirstWrite = undefined; // nothing unshipped is that old any more
  }

  // ---- shipping ----------------------------------------------------------------------------

  /**
   * Seals the open delta map now and ships it as the next delta. Resolves when it is committed
   * (or failed: then it waits in the spool, or its regions go out with the next seal). One seal
   * at a time; during an outage the seal goes to the local spool at once, whatever the drain of
   * earlier points is doing, so every interval keeps its own point in time.
   */
  async sealAndShip(): Promise<{ seq: number; regions: number } | undefined> {
    if (!this.hasBase) return undefined; // the writes wait in the open map (and the DRL) for the base
    while (this.shipping !== undefined) await this.shipping.catch(() => undefined);
    if (this.open.isEmpty() && this.spool.length === 0) return this.draining;
    let result: { seq: number; regions: number } | undefined;
    let drain: Promise<{ seq: number; regions: number } | undefined> | undefined;
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
  private drain(): Promise<{ seq: number; regions: number } | undefined> {
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
      } else if (!this.open.isEmpty() && this.hasBase) await this.shipDirect();
      if (this.spool.length > 0 || this.outage) {
        throw new CdpError('STORE_RETRYABLE', `the store is still unreachable (${this.lastShipError ?? 'unknown error'}); the scan waits until the spooled points in time are shipped`);
      }
      try {
        result = await fn(this.lock);
      } finally {
        const seqs = await this.repo.deltaSeqs();
        this.pit = await this.repo.loadPit(seqs.at(-1) ?? 0);
        // Regions the scan committed and nobody wrote since are no longer dirty.
        await this.clearDrl(this.drl.dirty());
      }
    })().finally(() => {
      this.shipping = undefined;
    });
    await this.shipping;
    return result!;
  }

  /** Seals, ships until nothing is left or the store keeps failing, and releases everything. */
  async close(): Promise<void> {
    try {
      while (this.shipping !== undefined) await this.shipping.catch(() => undefined);
      await this.sealAndShip();
    } finally {
      await this.lock.release().catch(() => undefined);
      await this.drl.close();
      await this.handle.close();
    }
  }

  /** Swaps in a fresh open map: the sealed regions, to be read as of this instant. */
  private seal(): Sealed {
    const sealed: Sealed = {
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

  private releaseSealed(sealed: Sealed): void {
    this.sealed = undefined;
    this.preimageBytes -= [...sealed.preimages.values()].reduce((n, b) => n + b.length, 0);
    for (const list of sealed.waiters.values()) for (const wake of list) wake();
    sealed.map.dispose();
    sealed.shipped.dispose();
  }

  /**
   * Seals the open map into the local spool now. False when the spool has no room for it: then
   * the open map keeps growing (later intervals coalesce).
   */
  private async spoolSeal(): Promise<boolean> {
    if (this.open.isEmpty()) return true;
    if (!this.spoolHasRoom(this.open.count())) return false;
    const sealTime = Math.max(this.clock(), (this.spool.at(-1)?.sealTime ?? 0) + 1, this.pit.time + 1);
    const sealed = this.seal();
    try {
      if (!(await this.writeSegment(sealed, sealTime))) this.reopen(sealed);
    } finally {
      this.releaseSealed(sealed);
    }
    return true;
  }

  private spoolHasRoom(regions: number): boolean {
    return this.spoolUsed + regions * this.geometry.regionSize <= (this.options.spoolBytes ?? 1024 * 1024 * 1024);
  }

  /** A seal that will not ship as its own point in time: its regions go out with the next seal. */
  private reopen(sealed: Sealed): void {
    this.open.union(sealed.map);
    if (sealed.firstWrite !== undefined) this.openFirstWrite = Math.min(this.openFirstWrite ?? Infinity, sealed.firstWrite);
  }

  /**
   * Writes the sealed regions' content at their seal into a spool segment that becomes the next
   * point in time after those already spooled. False when the local disk failed.
   */
  private async writeSegment(sealed: Sealed, sealTime: number): Promise<boolean> {
    const dir = this.spoolDir;
    const file = join(dir, `${String(++this.spoolCounter).padStart(8, '0')}${SPOOL_DATA}`);
    const segment: SpoolSegment = {
      expectedSeq: this.pit.seq + this.spool.length + 1,
      sealTime,
      regions: [],
      offsets: [],
      lengths: [],
      file,
      bytes: 0,
      firstWrite: sealed.firstWrite,
    };
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const out = await open(file, 'w', 0o600);
      const digest = createHash('sha256');
      try {
        for (const region of sealed.map.regions()) {
          const bytes = await this.readSealed(region);
          segment.regions.push(region);
          segment.offsets.push(segment.bytes);
          segment.lengths.push(bytes.length);
          await out.write(bytes, 0, bytes.length, segment.bytes);
          digest.update(bytes);
          segment.bytes += bytes.length;
        }
        await out.datasync();
      } finally {
        await out.close();
      }
      // The index goes last and whole (temp file, rename, directory sync): a segment with an index
      // is complete, so after a crash it can still be shipped as its own point in time.
      await writeSpoolIndex(segment, this.repo.config.volumeId, digest.digest());
      this.spool.push(segment);
      this.spoolUsed += segment.bytes;
      this.options.log?.(`store unreachable: kept the point in time of ${new Date(sealTime).toISOString()} (${segment.regions.length} regions) in the local spool`);
      return true;
    } catch (error) {
      // The local disk failed too: fall back to coalescing (the DRL and the primary still hold it all).
      await rm(file, { force: true });
      await rm(spoolIndexPath(file), { force: true });
      this.options.log?.(`spooling failed, coalescing instead: ${(error as Error).message}`);
      return false;
    }
  }

  /** Ships spooled points in time in order; stops at the first failure. Returns the last shipped. */
  private async drainSpool(): Promise<{ seq: number; regions: number } | undefined> {
    let last: { seq: number; regions: number } | undefined;
    while (this.spool.length > 0) {
      const segment = this.spool[0]!;
      const working = this.pit.clone();
      const signal = AbortSignal.timeout(this.shipTimeoutMs);
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
        this.deltasShipped++;
        this.lastShipError = undefined;
        this.spool.shift();
        this.spoolUsed -= segment.bytes;
        await rm(spoolIndexPath(segment.file), { force: true }); // the index first: no orphan index
        await rm(segment.file, { force: true });
        // Clear DRL bits no later spooled point, sealed map or open map still needs.
        const clear = new DeltaMap(this.geometry.regionCount);
        for (const region of segment.regions) clear.set(region);
        await this.clearDrl(clear);
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

  private async shipDirect(): Promise<{ seq: number; regions: number } | undefined> {
    const sealTime = Math.max(this.clock(), this.pit.time + 1);
    const sealed = this.seal();
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
        const bytes = await this.readSealed(region);
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
      this.sealed = undefined; // shipped: no longer pending
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
      const rewritten = sealed.shipped.clone().intersect(this.open);
      for (const region of this.writing.keys()) if (sealed.shipped.has(region)) rewritten.set(region);
      const intact = rewritten.isEmpty();
      rewritten.dispose();
      // From here on (before any await) writes to regions already read must save pre-images
      // again: the spool segment reads every region anew, and must see its content at the seal.
      if (intact) for (const region of [...sealed.shipped.regions()]) sealed.shipped.clear(region);
      if (!intact || !this.spoolHasRoom(sealed.map.count()) || !(await this.writeSegment(sealed, sealTime))) this.reopen(sealed);
      return undefined;
    } finally {
      writer.changed.dispose();
      this.releaseSealed(sealed);
    }
  }

  /** The region's content at the seal instant: its pre-image if one was saved, else the primary. */
  private async readSealed(region: number): Promise<Uint8Array> {
    const sealed = this.sealed!;
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
      if (this.preimageBytes + length > (this.options.preimageBytes ?? 256 * 1024 * 1024)) {
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
        this.preimageBytes += length;
      })();
      sealed.busy.set(region, task);
      await task;
      if (sealed.busy.get(region) === task) sealed.busy.delete(region);
    }
  }

  private afterWrite(first: number, end: number): void {
    this.openFirstWrite ??= this.clock();
    this.open.setRange(first, end);
    for (const recorder of this.recorders) recorder.map.setRange(first, end);
  }

  private async readFully(buffer: Uint8Array, position: number): Promise<void> {
    const n = await preadFully(this.handle.fd, buffer, position);
    if (n < buffer.length) throw new NbdRequestError('EIO', `unexpected end of the primary at byte ${position + n}`);
  }
}

const SPOOL_DATA = '.bin';
const SPOOL_INDEX = '.idx';
const SPOOL_INDEX_KIND = { magic: 'CDPS3SPL', version: 1, what: 'spool index' } as const;

/** A segment's data or index, or the temporary file an index is written to before its rename. */
const SPOOL_FILE = /^(\d{8}\.(bin|idx)|\.tmp-[0-9a-f]+)$/;

/**
 * The spool deletes the segments it cannot ship, so its directory must hold nothing else: not
 * the DRL, not another volume's spool, not anybody's files. Refused before anything is written.
 */
async function checkSpoolDir(dir: string, drl: string, volumeId: string): Promise<void> {
  const fix = 'give --spool-dir a directory of its own (default: the DRL path + .spool)';
  if (resolve(dirname(drl)) === resolve(dir)) {
    throw new InvalidArgumentError(`the spool directory ${dir} also holds the dirty region log ${drl}: ${fix}`);
  }
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return;
    throw new InvalidArgumentError(`the spool directory ${dir} cannot be used (${code ?? String(error)}): ${fix}`, { cause: error });
  }
  const foreign = names.filter((name) => !SPOOL_FILE.test(name)).sort();
  if (foreign.length > 0) {
    const listed = foreign.slice(0, 3).join(', ') + (foreign.length > 3 ? `, … (${foreign.length} in all)` : '');
    throw new InvalidArgumentError(`the spool directory ${dir} holds files that are not spool segments (${listed}): ${fix}`);
  }
  for (const name of names.filter((n) => n.endsWith(SPOOL_INDEX)).sort()) {
    let owner: string | undefined;
    try {
      owner = new FieldReader(`spool index ${name}`, openEnvelope(SPOOL_INDEX_KIND, await readFile(join(dir, name)))).string('volumeId');
    } catch {
      continue; // a damaged index of this spool: recovery drops it
    }
    if (owner !== volumeId) throw new InvalidArgumentError(`the spool directory ${dir} holds the spool of volume ${owner} (${name}): ${fix}`);
  }
}

function spoolDirOf(options: Pick<ProtectedVolumeOptions, 'spoolDir' | 'drl'>): string {
  return options.spoolDir ?? `${options.drl}.spool`;
}

function spoolIndexPath(dataFile: string): string {
  return dataFile.slice(0, -SPOOL_DATA.length) + SPOOL_INDEX;
}

function spoolNumber(file: string): number {
  return Number.parseInt(basename(file), 10);
}

async function writeSpoolIndex(segment: SpoolSegment, volumeId: string, dataDigest: Uint8Array): Promise<void> {
  const index = spoolIndexPath(segment.file);
  const body = {
    volumeId,
    expectedSeq: segment.expectedSeq,
    sealTime: segment.sealTime,
    ...(segment.firstWrite === undefined ? {} : { firstWrite: segment.firstWrite }),
    regions: segment.regions,
    offsets: segment.offsets,
    lengths: segment.lengths,
    bytes: segment.bytes,
    sha256: dataDigest,
  };
  // The local store's put is exactly the atomic, durable write wanted: temp file, fsync, rename,
  // directory fsync.
  await new FsStore(dirname(index)).put(basename(index), sealEnvelope(SPOOL_INDEX_KIND, body));
}

/**
 * The segments a crashed protect left in `dir` that can still ship as their own points in time,
 * in order. A segment is taken only whole (index present, for this volume, data matching its
 * SHA-256) and only as the next delta of the chain (`latest` + 1, + 2, …): one already committed
 * (the crash came between its commit and its removal) is deleted, and at the first segment that
 * is damaged or out of order, it and every later one are dropped, since a later point in time
 * is only right on top of the earlier ones. Everything not taken is removed; the DRL still holds
 * its regions.
 */
async function recoverSpool(repo: Repository, dir: string, latest: number, log?: (line: string) => void): Promise<SpoolSegment[]> {
  const { volumeId } = repo.config;
  const { regionCount } = repo.geometry;
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
  const taken: SpoolSegment[] = [];
  const indexes = names.filter((name) => /^\d{8}\.idx$/.test(name)).sort();
  let next = latest + 1;
  for (const name of indexes) {
    const file = join(dir, name.slice(0, -SPOOL_INDEX.length) + SPOOL_DATA);
    let segment: SpoolSegment;
    try {
      const body = new FieldReader(`spool index ${name}`, openEnvelope(SPOOL_INDEX_KIND, await readFile(join(dir, name))));
      if (body.string('volumeId') !== volumeId) throw new Error('it belongs to another volume');
      const bytes = body.integer('bytes');
      segment = {
        expectedSeq: body.integer('expectedSeq', 1),
        sealTime: body.integer('sealTime'),
        firstWrite: body.has('firstWrite') ? body.integer('firstWrite') : undefined,
        regions: body.integers('regions', 0, regionCount - 1),
        offsets: body.integers('offsets'),
        lengths: body.integers('lengths'),
        file,
        bytes,
      };
      const { regions, offsets, lengths } = segment;
      if (offsets.length !== regions.length || lengths.length !== regions.length || regions.some((_, i) => offsets[i]! + lengths[i]! > bytes)) {
        throw new Error('its index is inconsistent');
      }
      if ((await stat(file)).size !== bytes || !(await sha256OfFile(file)).equals(Buffer.from(body.bytes('sha256', 32)))) {
        throw new Error('its data does not match its index');
      }
    } catch (error) {
      log?.(`spool: ${name} cannot be shipped (${(error as Error).message}); it and later spooled points in time are dropped, their writes go out with the next point in time`);
      break;
    }
    if (segment.expectedSeq < next) {
      // Committed before the crash, if the delta with its number holds exactly its content (a
      // shipment that timed out but landed anyway could have shifted the numbers: then it is not).
      if (await committedAs(repo, segment)) continue;
      log?.(`spool: ${name} is not point in time ${segment.expectedSeq} of the chain; it and later ones are dropped, their writes go out with the next point in time`);
      break;
    }
    if (segment.expectedSeq !== next) {
      log?.(`spool: ${name} would be point in time ${segment.expectedSeq} but the chain ends at ${next - 1}; it and later ones are dropped, their writes go out with the next point in time`);
      break;
    }
    taken.push(segment);
    next += 1;
  }
  const keep = new Set(taken.flatMap((segment) => [basename(segment.file), basename(spoolIndexPath(segment.file))]));
  // Only the spool's own files go (checkSpoolDir refused a directory holding anything else).
  for (const name of names) if (!keep.has(name) && SPOOL_FILE.test(name)) await rm(join(dir, name), { force: true });
  if (taken.length > 0) log?.(`spool: ${taken.length} point${taken.length === 1 ? '' : 's'} in time from before the restart will ship first`);
  return taken;
}

async function sha256OfFile(path: string): Promise<Buffer> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest();
}

/**
 * A spool segment's regions in order, each with its bytes and their SHA-256 (undefined for a
 * region of zeros, which ships as a zero entry).
 */
async function* spoolRegions(segment: SpoolSegment): AsyncGenerator<{ region: number; bytes: Buffer; digest: Buffer | undefined }> {
  const input = await open(segment.file, 'r');
  try {
    for (let i = 0; i < segment.regions.length; i++) {
      const bytes = Buffer.allocUnsafe(segment.lengths[i]!);
      if ((await preadFully(input.fd, bytes, segment.offsets[i]!)) < bytes.length) throw new Error(`${segment.file} is shorter than its index says`);
      const digest = kernels().isZero(bytes) ? undefined : createHash('sha256').update(bytes).digest();
      yield { region: segment.regions[i]!, bytes, digest };
    }
  } finally {
    await input.close();
  }
}

/** True when delta `segment.expectedSeq` changed exactly the segment's regions to its bytes. */
async function committedAs(repo: Repository, segment: SpoolSegment): Promise<boolean> {
  const delta = await repo.readDelta(segment.expectedSeq);
  try {
    const changed = [...delta.changed.regions()];
    if (changed.length !== segment.regions.length || changed.some((region, i) => region !== segment.regions[i])) return false;
    let i = 0;
    for await (const { digest } of spoolRegions(segment)) {
      const expected = delta.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES);
      if (!(digest ?? Buffer.alloc(DIGEST_BYTES)).equals(expected)) return false;
      i++;
    }
    return true;
  } finally {
    delta.changed.dispose();
  }
}

/** Where a running protect publishes its status (lag, DRL, pre-images) for `cdp-s3 status`. */
export const PROTECT_STATUS_PREFIX = 'status/';
export const PROTECT_STATUS_KIND = { magic: 'CDPS3STA', version: 1, what: 'protect status' } as const;

export function protectStatusKey(source: string): string {
  return `${PROTECT_STATUS_PREFIX}${hostname()}-${createHash('sha256').update(source).digest('hex').slice(0, 12)}`;
}

export interface ProtectOptions extends ProtectedVolumeOptions {
  listen: { host: string; port: number };
  /** Extra export names besides the default empty one. */
  names?: string[];
  /** Milliseconds between seals. Default 5000. */
  intervalMs?: number;
  /** Milliseconds between integrity scans (0: only on demand). */
  scanEveryMs?: number;
  /** Runs `run` every `everyMs` until the returned function is called. Default setInterval (tests tick by hand). */
  schedule?: (run: () => void, everyMs: number) => () => void;
}

function everyInterval(run: () => void, everyMs: number): () => void {
  const timer = setInterval(run, everyMs);
  return () => clearInterval(timer);
}

export interface ProtectHandle {
  host: string;
  port: number;
  volume: ProtectedVolume;
  /** Runs an integrity scan now (claims 7–11 with live host-change tracking). */
  scanNow(): Promise<ScanResult>;
  /** Stop accepting, finish in-flight requests, seal and ship a last delta, release everything. */
  stop(): Promise<ProtectStatus>;
}

/**
 * Serves SOURCE over NBD and protects it: a delta every interval, scans on a schedule and on
 * demand, and on stop (or the signal) a clean drain.
 */
export async function protect(options: ProtectOptions): Promise<ProtectHandle> {
  const volume = await ProtectedVolume.open(options);
  const named = (name: string): NbdExport =>
    new Proxy(volume, {
      get: (target, key, receiver) => (key === 'name' ? name : Reflect.get(target, key, receiver)),
    });
  const exports = [volume, ...(options.names ?? []).filter((n) => n !== '').map(named)];
  const server = new NbdServer({ exports, log: options.log });
  let address: { host: string; port: number };
  try {
    address = await server.listen(options.listen.host, options.listen.port);
  } catch (error) {
    await volume.close();
    throw error;
  }
  const intervalMs = options.intervalMs ?? 5000;
  let stopped = false;
  const statusKey = protectStatusKey(options.source);
  // Status reports are put one at a time, in the order they are made, and the stop's report is
  // the last word: a tick's report still queued or in flight when it is made is cancelled, so no
  // late "running" can land after it.
  let reported: Promise<void> = Promise.resolve();
  const ticking = new AbortController();
  let finalReport = false;
  const publish = (running: boolean): Promise<void> => {
    if (finalReport) return reported;
    if (!running) {
      finalReport = true;
      ticking.abort();
    }
    const signal = running ? ticking.signal : undefined;
    reported = reported.then(async () => {
      const body = { ...volume.status(), running, updated: Date.now(), intervalMs, source: options.source, host: hostname(), pid: process.pid };
      await options.store.put(statusKey, sealEnvelope(PROTECT_STATUS_KIND, { json: JSON.stringify(body) }), { signal }).catch(() => undefined);
    });
    return reported;
  };
  // No base yet: take it while serving; nothing else commits until it has. A failed base is
  // taken again at the next interval.
  const baseAbort = new AbortController();
  let takingBase: Promise<void> | undefined;
  const takeBase = (): void => {
    if (takingBase !== undefined || volume.hasBase || stopped) return;
    takingBase = volume
      .takeBase({ signal: baseAbort.signal })
      .then((result) => {
        const fuzzy = result.suspect.length > 0 ? ' (the host wrote meanwhile: marked suspect, the next point in time is the first whole one)' : '';
        options.log?.(`base: point in time ${result.fixupSeq}, ${result.repaired} regions${fuzzy}`);
      })
      .catch((error: unknown) => {
        if (!stopped) options.log?.(`taking the base failed, trying again at the next interval: ${(error as Error).message}`);
      })
      .finally(() => {
        takingBase = undefined;
      });
  };
  takeBase();
  const schedule = options.schedule ?? everyInterval;
  const stopTicker = schedule(() => {
    takeBase();
    if (!stopped) void volume.sealAndShip().then(() => publish(true)).catch((error: unknown) => options.log?.(`shipping: ${(error as Error).message}`));
  }, intervalMs);
  await publish(true);
  const scanNow = async (): Promise<ScanResult> => {
    const result = await volume.exclusive((lock) =>
      scan({ store: options.store, source: options.source, changes: volume, heldLock: lock }),
    );
    volume.lastScan = { time: new Date().toISOString(), scanned: result.scanned, discrepancies: result.discrepancies, fixupSeq: result.fixupSeq, suspect: result.suspect };
    options.log?.(`scan: ${result.scanned} regions, ${result.discrepancies} differed${result.suspect.length > 0 ? `, suspect ${result.suspect.join(', ')}` : ''}`);
    return result;
  };
  const stopScans =
    options.scanEveryMs !== undefined && options.scanEveryMs > 0
      ? schedule(() => {
          if (!stopped) scanNow().catch((error: unknown) => options.log?.(`scheduled scan failed: ${(error as Error).message}`));
        }, options.scanEveryMs)
      : undefined;
  let stopping: Promise<ProtectStatus> | undefined;
  const stop = (): Promise<ProtectStatus> =>
    (stopping ??= (async () => {
      stopped = true;
      stopTicker();
      stopScans?.();
      baseAbort.abort(); // an unfinished base commits nothing; it is taken at the next start
      await takingBase;
      await server.close({ drain: true });
      try {
        await volume.sealAndShip(); // the last delta: everything written before the drain
        await publish(false);
        return volume.status();
      } finally {
        await volume.close();
      }
    })());
  options.signal?.addEventListener('abort', () => void stop(), { once: true });
  return { host: address.host, port: address.port, volume, scanNow, stop };
}
