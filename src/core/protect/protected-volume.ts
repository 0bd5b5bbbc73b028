// ProtectedVolume: the protected primary as an NBD export that tracks every write (WriteTracker),
// the change source of scans inside protect, and the shipper of its deltas (Shipper, with the
// outage Spool). Opening it checks the volume, the spool directory and the DRL, takes the
// writer lock and recovers what a crash left in the spool.

import type { FileHandle } from 'node:fs/promises';
import { realpath } from 'node:fs/promises';
import { CdpError } from '../../errors.js';
import type { DeltaMap } from '../../model/delta-map.js';
import type { Geometry } from '../../model/regions.js';
import type { NbdExport } from '../../nbd/types.js';
import { type WriterLock, acquireWriterLock, forceUnlock } from '../../repo/lock.js';
import type { ProtectStatus } from '../../repo/protect-status.js';
import { Repository, viewForWriting } from '../../repo/repository.js';
import { readWriterTrust } from '../../repo/trust.js';
import { DeltaCommitter } from '../delta-committer.js';
import { PatchHistory } from '../delta-writer.js';
import type { ChangeRecorder, ChangeSource } from '../../volume/changes.js';
import { DirtyRegionLog } from '../../volume/dirty-region-log.js';
import { pwriteFully, pwritevFully } from '../../util/positional-io.js';
import { openVolume } from '../../volume/source.js';
import { RegionPool } from '../../volume/region-pool.js';
import type { Progress } from '../progress.js';
import { type ScanHooks, type ScanResult, scan } from '../scan.js';
import type { ProtectedVolumeOptions, ShipResult } from './options.js';
import { Shipper } from './shipper.js';
import { Spool, checkSpoolDir, recoverSpool, spoolDirOf } from './spool.js';
import { WriteTracker } from './write-tracker.js';

const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

/** The protected primary: an NBD export that tracks every write, and the shipper of deltas. */
export class ProtectedVolume implements NbdExport, ChangeSource {
  readonly readOnly = false;
  readonly name: string;
  readonly size: number;
  readonly geometry: Geometry;
  lastScan: unknown;
  private readonly tracker: WriteTracker;
  private readonly shipper: Shipper;
  private baseProgress = { phase: 'waiting', bytesDone: 0, bytesTotal: 0 };
  private readonly clock: () => number;
  /** Threads that hash what the shipper reads. */
  private readonly pool: RegionPool;

  private constructor(
    repo: Repository,
    private readonly handle: FileHandle,
    private readonly drl: DirtyRegionLog,
    private readonly lock: WriterLock,
    committer: DeltaCommitter,
    private readonly spool: Spool,
    private readonly options: ProtectedVolumeOptions,
  ) {
    this.pool = new RegionPool(undefined, repo.identity);
    this.geometry = repo.geometry;
    this.size = repo.geometry.volumeSize;
    this.name = options.name ?? '';
    this.clock = options.clock ?? Date.now;
    this.tracker = new WriteTracker(handle, drl, this.geometry, {
      clock: this.clock,
      preimageLimit: options.preimageBytes ?? 256 * 1024 * 1024,
      blockSize: repo.config.blockSize,
      hooks: options.hooks,
    });
    this.shipper = new Shipper(repo, lock, this.tracker, spool, committer, options, this.pool);
  }

  static async open(options: ProtectedVolumeOptions): Promise<ProtectedVolume> {
    const repo = await Repository.open(options.store, options.signal);
    if (options.compression !== undefined) repo.compression = options.compression;
    if (options.patchLimits !== undefined) repo.patchLimits = options.patchLimits;
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
      const spoolDir = spoolDirOf(options);
      await checkSpoolDir(spoolDir, options.drl, repo.config.volumeId);
      drl = await DirtyRegionLog.openOrCreate(options.drl, { volumeId: repo.config.volumeId, regionCount: g.regionCount, regionSize: g.regionSize });
      if (options.forceUnlock === true) await forceUnlock(options.store, { signal: options.signal });
      lock = await acquireWriterLock(options.store, { command: 'protect', ttlMs: options.lockTtlMs, signal: options.signal });
      const index = await repo.index(options.signal);
      // No base yet (latest 0): protect serves at once and takes the base while serving (takeBase).
      const latest = index.latest;
      const head = await viewForWriting(repo, index, 'protect', options.signal);
      const missing = index.missingDeltas();
      if (missing.length > 0) {
        options.log?.(`the chain is missing deltas ${missing.join(', ')}; new points in time go after the newest (a span past the gap stands in for it), never into the gap (see cdp-s3 log and verify)`);
      }
      const committer = new DeltaCommitter({
        repo,
        index,
        head,
        lock,
        // Each shipment reads the marks afresh (Shipper.readTrust); this one is for a writer made without.
        trust: await readWriterTrust(options.store, options.signal),
        sourcePath: await realpath(options.source),
        clock: options.clock,
        // The patch chains protect makes, so a chain at its bound is merged rather than replaced by the whole region.
        history: new PatchHistory(),
      });
      // Points in time spooled during an outage before a crash ship first, in order; their
      // regions are in the DRL too, so whatever cannot be recovered still goes out coalesced.
      const recovered = await recoverSpool(repo, spoolDir, latest, options.log);
      if (drl.created && latest > 0) {
        options.log?.(`created dirty region log ${options.drl}: writes made to ${options.source} outside cdp-s3 since the last backup are not tracked; run cdp-s3 scan to find them`);
      }
      const spool = new Spool(spoolDir, repo.config.volumeId, options.spoolBytes ?? 1024 * 1024 * 1024, g.regionSize, options.log);
      spool.adopt(recovered);
      return new ProtectedVolume(repo, handle, drl, lock, committer, spool, options);
    } catch (error) {
      await lock?.release().catch(() => undefined);
      await drl?.close();
      await handle.close();
      throw error;
    }
  }

  status(): ProtectStatus {
    const pit = this.shipper.head;
    const oldest = minDefined(this.spool.segments[0]?.firstWrite, this.tracker.oldestWrite);
    const unshipped = this.pending();
    const unshippedRegions = unshipped.count();
    unshipped.dispose();
    return {
      seq: pit.seq,
      time: pit.time === 0 ? undefined : new Date(pit.time).toISOString(),
      lagMs: oldest === undefined ? 0 : this.clock() - oldest,
      oldestUnshippedWrite: oldest === undefined ? undefined : new Date(oldest).toISOString(),
      drlRegions: this.tracker.drlRegions,
      preimageBytes: this.tracker.preimageBytes,
      spooledPoints: this.spool.length,
      spoolBytes: this.spool.bytes,
      unshippedRegions,
      deltasShipped: this.shipper.deltasShipped,
      lastShipError: this.shipper.lastShipError,
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
    return this.shipper.hasBase;
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

  // ---- NbdExport -------------------------------------------------------------------------

  async read(offset: number, length: number): Promise<Uint8Array> {
    const bytes = Buffer.allocUnsafe(length);
    await this.tracker.readFully(bytes, offset);
    return bytes;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    await this.tracker.readFully(target, offset);
  }

  /** A write whose payload arrived in pieces: written with one writev, no copy. */
  async writev(offset: number, chunks: Uint8Array[], fua: boolean): Promise<void> {
    let length = 0;
    for (const chunk of chunks) length += chunk.length;
    await this.tracker.tracked(offset, length, fua, () => pwritevFully(this.handle.fd, chunks, offset));
  }

  async write(offset: number, bytes: Uint8Array, fua: boolean): Promise<void> {
    await this.tracker.tracked(offset, bytes.length, fua, () => pwriteFully(this.handle.fd, bytes, offset));
  }

  async flush(): Promise<void> {
    await this.tracker.marksDurable();
    await this.handle.datasync();
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.writeZeroes(offset, length, fua);
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    await this.tracker.tracked(offset, length, fua, async () => {
      for (let at = offset; at < offset + length; at += ZERO_CHUNK.length) {
        await pwriteFully(this.handle.fd, ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, offset + length - at)), at);
      }
    });
  }

  // ---- ChangeSource (for scans inside protect) --------------------------------------------

  record(): ChangeRecorder {
    return this.tracker.record();
  }

  pending(): DeltaMap {
    return this.shipper.pending();
  }

  distrust(regions: DeltaMap): void {
    this.tracker.distrust(regions);
  }

  committed(regions: DeltaMap): void {
    this.tracker.committed(regions);
  }

  // ---- shipping ----------------------------------------------------------------------------

  /**
   * Seals the open delta map now and ships it as the next delta. Resolves when it is committed
   * (or failed: then it waits in the spool, or its regions go out with the next seal).
   */
  sealAndShip(): Promise<ShipResult> {
    return this.shipper.sealAndShip();
  }

  /**
   * Runs fn with shipping paused (a scan inside protect commits deltas of its own), then picks
   * up the chain as fn left it.
   */
  exclusive<T>(fn: (lock: WriterLock) => Promise<T>): Promise<T> {
    return this.shipper.exclusive(fn);
  }

  /** Seals, ships until nothing is left or the store keeps failing, and releases everything. */
  async close(): Promise<void> {
    try {
      await this.shipper.finish();
    } finally {
      await this.lock.release().catch(() => undefined);
      await this.drl.close();
      await this.handle.close();
      await this.pool.close();
    }
  }
}

function minDefined(a: number | undefined, b: number | undefined): number | undefined {
  return a === undefined ? b : b === undefined ? a : Math.min(a, b);
}
