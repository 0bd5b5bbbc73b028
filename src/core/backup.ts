// backup: read the primary volume, compare each region's digest with the latest PIT map, and
// commit the regions that differ as the next delta of the chain (the first one is the base).
//
// Reading and hashing run on every core (RegionPool); the main thread deduplicates, packs and
// uploads. Order of commit: packs, then the delta, then (every N deltas) a checkpoint, so a
// crash or Ctrl-C at any point leaves only unreferenced packs, never a delta without its data.

import { realpath } from 'node:fs/promises';
import { AbortedError, CdpError, throwIfAborted } from '../errors.js';
import type { DeltaMap } from '../model/delta-map.js';
import type { PitPage } from '../model/pages.js';
import type { DeltaKind } from '../model/regions.js';
import { type WriterLock, acquireWriterLock, forceUnlock } from '../repo/lock.js';
import type { PitView } from '../repo/pit-view.js';
import type { Compression } from '../repo/pieces.js';
import { Repository, viewForWriting } from '../repo/repository.js';
import { readWriterTrust, storedDamaged } from '../repo/trust.js';
import type { ObjectStore } from '../store/types.js';
import { DirtyRegionLog } from '../volume/dirty-region-log.js';
import { RegionIoError, RegionPool } from '../volume/region-pool.js';
import { regionsWithData } from '../volume/extents.js';
import { openVolume } from '../volume/source.js';
import { type ByteRange, RangeBlocks, regionsOfRanges } from './changed-ranges.js';
import { DeltaCommitter } from './delta-committer.js';
import { NEVER_DIGEST, readRegions, regionsWithPages } from './delta-writer.js';
import { type Progress, silentProgress } from './progress.js';
import type { Timer } from '../util/timer.js';

export interface BackupOptions {
  store: ObjectStore;
  /** Image file or block device; must be the size the repository was initialized with. */
  source: string;
  /** Only read these byte ranges (from an external change tracker); the rest carries over. */
  changed?: ByteRange[];
  /**
   * A dirty region log file: read only the regions it lists (with `changed`, both), and clear
   * them once the delta holding them commits.
   */
  drl?: string;
  signal?: AbortSignal;
  progress?: Progress;
  /** Regions being read and hashed at once. Default: 4 per worker. */
  readAhead?: number;
  /** Packs being uploaded at once (each up to the repository's pack size in memory). Default 4. */
  packsInFlight?: number;
  /** Worker threads for reading and hashing. Default: one per core. */
  workers?: number;
  /** Milliseconds since the epoch; tests pin it. */
  clock?: () => number;
  /** Remove every repository lock first (--force-unlock): only when no other writer is running. */
  forceUnlock?: boolean;
  /** Repository lock lifetime without refresh; default 5 minutes (tests shorten it). */
  lockTtlMs?: number;
  /** Schedules the lock's refreshes; tests drive them by hand. */
  lockTimer?: Timer;
  /** Runs of at most this many entries are stored inline in their root (default 4096; the golden fixtures force page packs). */
  inlineEntries?: number;
  /** How this backup compresses what it stores (default: the repository's config). */
  compression?: Compression;
}

export interface BackupResult {
  seq: number;
  kind: DeltaKind;
  /** The new point in time (ISO 8601 UTC). */
  time: string;
  regionsScanned: number;
  /** Bytes read from the source (holes of a sparse file are not read). */
  bytesScanned: number;
  /** Regions of the volume that hold data (allocated extents), when the source could tell. */
  dataRegions: number | undefined;
  regionsChanged: number;
  /** Region bytes uploaded (after deduplication; zero regions cost nothing), patches included. */
  bytesStored: number;
  /** Regions stored as a patch of the blocks --changed named (docs/FORMAT.md, "Patches"). */
  regionsPatched: number;
  packs: number;
  /** Spans written after this point (docs/FORMAT.md, "Spans"). */
  spans: number;
  /** Why a span due at this point was not written (the point in time is committed). */
  spanError?: string;
  /** Bytes of metadata stored: the delta's root and pages, and the spans'. */
  metadataBytes: number;
  /** Regions stored again because a verify found their stored copy damaged. */
  regionsRepaired: number;
  /** Deltas missing from the chain that this backup saw (a span past them let it add to it). */
  missingDeltas: number[];
  /** `marks/` objects that cannot be read: changed regions were stored anew, not deduplicated against earlier packs. */
  unreadableMarks: string[];
}

export async function backup(options: BackupOptions): Promise<BackupResult> {
  const { store, signal } = options;
  const progress = options.progress ?? silentProgress;
  const clock = options.clock ?? Date.now;
  throwIfAborted(signal);
  const repo = await Repository.open(store, signal);
  if (options.inlineEntries !== undefined) repo.inlineEntries = options.inlineEntries;
  if (options.compression !== undefined) repo.compression = options.compression;
  const g = repo.geometry;
  const volume = await openVolume(options.source, 'read');
  const maps: DeltaMap[] = [];
  let drl: DirtyRegionLog | undefined;
  let pool: RegionPool | undefined;
  let lock: WriterLock | undefined;
  try {
    if (volume.size !== g.volumeSize) {
      throw new CdpError(
        'VOLUME_MISMATCH',
        `${options.source} is ${volume.size} bytes but the repository's volume is ${g.volumeSize} bytes: back up the same disk, or init a new repository`,
      );
    }
    // The regions to read: everything, or what a change tracker or the dirty region log names.
    let toScan = options.changed === undefined ? undefined : regionsOfRanges(options.changed, g);
    if (toScan !== undefined) maps.push(toScan);
    // The blocks the changed ranges touch: a region only they name can be stored as a patch of
    // those blocks (the DRL names regions, not blocks: its regions are stored whole).
    const rangeBlocks = options.changed === undefined ? undefined : new RangeBlocks(options.changed, g, repo.config.blockSize);
    let drlDirty: DeltaMap | undefined;
    if (options.drl !== undefined) {
      drl = await DirtyRegionLog.open(options.drl, { volumeId: repo.config.volumeId, regionCount: g.regionCount, regionSize: g.regionSize });
      drlDirty = drl.dirty();
      maps.push(drlDirty);
      if (toScan === undefined) maps.push((toScan = drlDirty.clone()));
      else toScan.union(drlDirty);
    }
    pool = new RegionPool(options.workers, repo.identity);
    // One writer at a time, from before the chain is read to the end (the source is checked
    // first, so a bad source fails without writing anything).
    if (options.forceUnlock === true) await forceUnlock(store, { signal });
    lock = await acquireWriterLock(store, { command: 'backup', ttlMs: options.lockTtlMs, timer: options.lockTimer, signal });
    const index = await repo.index(signal);
    const previous = index.latest;
    // The newest point in time, read page by page as the volume is.
    const head = await viewForWriting(repo, index, 'backup', signal);
    const trust = await readWriterTrust(store, signal);
    const committer = new DeltaCommitter({
      repo,
      index,
      head,
      lock,
      trust,
      sourcePath: await realpath(options.source),
      clock,
      packsInFlight: options.packsInFlight,
      signal,
    });
    const writer = committer.begin();
    maps.push(writer.changed);
    let page: PitPage | undefined;
    // A region whose stored copy a verify found damaged is stored again, even when unchanged.
    const isDamaged = (region: number): boolean => storedDamaged(trust.damaged, page!.stored(region));
    let regionsScanned = 0;
    let bytesScanned = 0;
    let regionsRepaired = 0;
    // A sparse file's holes are zeros: read only its allocated extents.
    const dataRegions = regionsWithData(volume.handle.fd, g, volume.isBlockDevice);
    if (dataRegions !== undefined) maps.push(dataRegions);
    const start = clock();
    progress.phase('backup', toScan === undefined ? g.volumeSize : toScan.count() * g.regionSize);
    try {
      await readRegions({
        pool,
        fd: volume.handle.fd,
        geometry: g,
        regions: regionsWithPages(head, toScan, (p) => (page = p), signal, dataRegions),
        dataRegions,
        expected: (region) => (isDamaged(region) ? NEVER_DIGEST : page!.isZero(region) ? null : page!.digest(region)),
        onResult: async (region, result) => {
          if (result.status !== 'same' && isDamagedIn(head, trust.damaged, region)) regionsRepaired++;
          const blocks = rangeBlocks === undefined || drlDirty?.has(region) === true ? undefined : rangeBlocks.of(region);
          await writer.apply(region, result, blocks);
          await writer.closeBelow(region);
        },
        onRead: (region, length) => {
          regionsScanned++;
          if (dataRegions === undefined || dataRegions.has(region)) bytesScanned += length;
          progress.advance(length);
        },
        readAhead: options.readAhead,
        signal,
      });
      await writer.finish();
    } catch (error) {
      if (signal?.aborted === true) throw new AbortedError('backup cancelled; nothing was committed');
      throw wrapSourceError(error, options.source);
    }
    progress.done();
    if (signal?.aborted === true) throw new AbortedError('backup cancelled; nothing was committed');

    const committed = await committer.commit(writer, previous === 0 ? 'base' : 'host', start);
    // The regions read are committed now (the DRL is local: it only lists uncommitted writes).
    if (drl !== undefined && toScan !== undefined) await drl.clear(toScan);
    return {
      seq: committed.seq,
      kind: committed.kind,
      time: new Date(committed.end).toISOString(),
      regionsScanned,
      bytesScanned,
      dataRegions: dataRegions?.count(),
      regionsChanged: committed.regions,
      bytesStored: committed.bytesStored,
      regionsPatched: committed.regionsPatched,
      packs: committed.packs,
      spans: committed.commit.spans.length,
      ...(committed.commit.spanError === undefined ? {} : { spanError: committed.commit.spanError }),
      metadataBytes: committed.commit.metadataBytes + writer.pageBytes,
      regionsRepaired,
      missingDeltas: index.missingDeltas(),
      unreadableMarks: trust.unreadable,
    };
  } finally {
    // A lock that cannot be removed (or was lost after the last check) expires by itself; the
    // outcome of the backup is what matters here.
    await lock?.release().catch(() => undefined);
    for (const map of maps) map.dispose();
    await drl?.close();
    await pool?.close();
    await volume.handle.close();
  }
}

/** Whether the head's stored copy of `region` (its page is at hand) is known damaged. */
function isDamagedIn(head: PitView, damaged: ReadonlySet<string>, region: number): boolean {
  return storedDamaged(damaged, head.cachedPageOf(region)?.stored(region));
}

function wrapSourceError(error: unknown, source: string): unknown {
  if (error instanceof RegionIoError) return new CdpError('SOURCE', `reading ${source} failed: ${error.message}`, { cause: error });
  return error;
}
