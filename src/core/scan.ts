// scan: synchronize the secondary with the primary by scan-and-compare (claims 1–11), and mark
// exactly which older points in time cannot be trusted.
//
//  1. claim 3       seal the present delta map (host changes since the previous delta) as a
//                   delta, and take the PIT map of the newest point in time;
//  2. claims 1,2,4  scan every region of the primary (claims 5,6: only those in the dirty region
//                   log), compare its SHA-256 with the region the PIT map names, and record each
//                   discrepancy in the compare delta map;
//  3. claims 7,8    subtract the scan delta map (host writes during the scan interval);
//  4. claim 11      from the newest delta committed before the scan, walk back marking each
//                   delta suspect and subtracting its regions, until the revised map is empty;
//  5. claims 9,10   copy the revised compare map's regions; merge it into the host change delta
//                   map (writes during the copy interval) to make the fix-up delta; append it.
//
// The scan compares against stored digests: it downloads no region data. Suspect marks and a
// scan record are new objects; deltas are never rewritten.

import { realpath } from 'node:fs/promises';
import { hostname } from 'node:os';
import { CdpError, InvalidArgumentError, NoPointInTimeError, throwIfAborted } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import { MAX_REGIONS_LISTED, type ScanRecord, type TrustMark } from '../repo/records.js';
import { type WriterLock, acquireWriterLock, forceUnlock } from '../repo/lock.js';
import { Repository, loadNewestForWriting } from '../repo/repository.js';
import { putMarks, putScanRecord, readWriterTrust, scanRecordKey } from '../repo/trust.js';
import { CountingStore } from '../store/counting.js';
import type { ObjectStore } from '../store/types.js';
import { type ChangeSource, QuiescentSource } from '../volume/changes.js';
import { DirtyRegionLog } from '../volume/dirty-region-log.js';
import { RegionPool } from '../volume/region-pool.js';
import { openVolume } from '../volume/source.js';
import { DeltaWriter, NEVER_DIGEST, locationId, readRegions } from './delta-writer.js';
import { type Progress, silentProgress } from './progress.js';

/** The dirty region log as the scan uses it (src/volume/dirty-region-log.ts). */
export interface ScanDirtyLog {
  dirty(): DeltaMap;
  clear(regions: DeltaMap): Promise<void>;
}

/** Points where tests interleave host writes deterministically. */
export interface ScanHooks {
  /** After a region was read and compared during the scan interval. */
  afterScanRead?(region: number): Promise<void> | void;
  /** The copy interval has begun (host writes from now on go to the host change map). */
  copyStarted?(): Promise<void> | void;
  /** After a region of the revised compare map was read for copying. */
  afterCopyRead?(region: number): Promise<void> | void;
}

export interface ScanOptions {
  store: ObjectStore;
  /** The primary volume: image file or block device. */
  source: string;
  /** Who else writes the primary; default: nobody (QuiescentSource). */
  changes?: ChangeSource;
  /**
   * Scan only the regions in this dirty region log (claims 5, 6), and clear what gets
   * committed: a DRL file path (opened for this repository's volume) or an open log.
   */
  drl?: string | ScanDirtyLog;
  /** Report only: no delta, no marks, no record (and no lock taken). */
  dryRun?: boolean;
  /** Remove every repository lock first (--force-unlock): only when no other writer is running. */
  forceUnlock?: boolean;
  lockTtlMs?: number;
  /** The writer lock the caller already holds (a scan inside protect); none is taken then. */
  heldLock?: WriterLock;
  signal?: AbortSignal;
  progress?: Progress;
  workers?: number;
  readAhead?: number;
  packsInFlight?: number;
  clock?: () => number;
  hooks?: ScanHooks;
  /**
   * The chain is empty: take the base by this method, with `changes` tracking host writes (a
   * protect serving the disk meanwhile). Every region that is not zero is a discrepancy; host
   * writes during it are left to the next delta (claims 7–10); the copy commits as the base. A
   * base the host wrote during is marked suspect: it is no one instant (the next point is).
   */
  base?: boolean;
}

export interface SuspectReport {
  seq: number;
  /** Some of the discrepant regions still unexplained when this delta was reached. */
  regions: number[];
}

/** The counts a scan record stores (documented there), plus what only the caller needs. */
export interface ScanResult extends Omit<ScanRecord, 'start' | 'end' | 'source' | 'drl'> {
  /** Regions re-uploaded because a verify found their stored bytes damaged. */
  reuploaded: number;
  suspectDetails: SuspectReport[];
  /** Every delta back to the first was marked: a discrepant region is in no delta. */
  reachedChainStart: boolean;
  /** Bytes the scan downloaded (config, deltas, checkpoints, marks): no region data. */
  bytesFetched: number;
  /** The scan record written (undefined on a dry run). */
  record: string | undefined;
  /** Discrepant regions, in order (at most MAX_REGIONS_LISTED). */
  discrepantRegions: number[];
  /** Deltas missing from the chain: new deltas went after the newest, and the walk back could not subtract them. */
  missingDeltas: number[];
  /** `marks/` objects that cannot be read: changed regions were stored anew, not deduplicated against earlier packs. */
  unreadableMarks: string[];
}

function firstRegions(map: DeltaMap): number[] {
  const out: number[] = [];
  for (const region of map.regions()) {
    if (out.length === MAX_REGIONS_LISTED) break;
    out.push(region);
  }
  return out;
}

function* allRegions(count: number): Generator<number> {
  for (let i = 0; i < count; i++) yield i;
}

export async function scan(options: ScanOptions): Promise<ScanResult> {
  const { signal } = options;
  const store = new CountingStore(options.store);
  const progress = options.progress ?? silentProgress;
  const clock = options.clock ?? Date.now;
  const dryRun = options.dryRun === true;
  const hooks = options.hooks ?? {};
  throwIfAborted(signal);
  const repo = await Repository.open(store, signal);
  const g = repo.geometry;
  const changes = options.changes ?? new QuiescentSource(g.regionCount);
  const volume = await openVolume(options.source, 'read');
  const opened =
    typeof options.drl === 'string'
      ? await DirtyRegionLog.open(options.drl, { volumeId: repo.config.volumeId, regionCount: g.regionCount, regionSize: g.regionSize }).catch(
          async (error: unknown) => {
            await volume.handle.close();
            throw error;
          },
        )
      : undefined;
  const drl: ScanDirtyLog | undefined = opened ?? (typeof options.drl === 'string' ? undefined : options.drl);
  const pool = new RegionPool(options.workers);
  let lock: WriterLock | undefined;
  const maps: DeltaMap[] = []; // disposed at the end
  const track = (map: DeltaMap): DeltaMap => {
    maps.push(map);
    return map;
  };
  try {
    if (volume.size !== g.volumeSize) {
      throw new CdpError(
        'VOLUME_MISMATCH',
        `${options.source} is ${volume.size} bytes but the repository's volume is ${g.volumeSize} bytes: scan the disk this repository protects`,
      );
    }
    // A scan that may write holds the writer lock from before it reads the chain to the end.
    if (!dryRun && options.heldLock === undefined) {
      if (options.forceUnlock === true) await forceUnlock(store, { signal });
      lock = await acquireWriterLock(store, { command: 'scan', ttlMs: options.lockTtlMs, signal });
    }
    const activeLock = options.heldLock ?? lock;
    const sourcePath = await realpath(options.source);
    const chain = await repo.listChain(signal);
    let latest = chain.latest;
    const base = options.base === true;
    if (latest === 0 && !base) throw new NoPointInTimeError(`${store.location} has no points in time to compare with: run cdp-s3 backup first`);
    if (latest !== 0 && base) throw new InvalidArgumentError(`${store.location} has a base already (point in time ${latest})`);
    if (base && dryRun) throw new InvalidArgumentError('a base cannot be taken as a dry run');
    const baseRecorder = base ? changes.record() : undefined;
    const trust = await readWriterTrust(store, signal);
    const pit = await loadNewestForWriting(repo, chain, 'scan', signal);
    const read = (
      regions: Iterable<number>,
      expected: (r: number) => Uint8Array | null,
      onResult: Parameters<typeof readRegions>[0]['onResult'],
      onRead?: Parameters<typeof readRegions>[0]['onRead'],
    ) => readRegions({ pool, fd: volume.handle.fd, geometry: g, regions, expected, onResult, onRead, readAhead: options.readAhead, signal });
    const commit = async (writer: DeltaWriter, kind: 'host' | 'fixup' | 'base', start: number): Promise<number> => {
      await writer.finish();
      const delta = writer.delta(kind, start, Math.max(clock(), pit.time + 1, start));
      delta.source = { host: hostname(), path: sourcePath };
      pit.seq = delta.seq;
      pit.time = delta.end;
      activeLock?.check();
      await repo.commitDelta(delta, pit, signal);
      return delta.seq;
    };

    // Claim 3: seal the present delta map (changes since the previous delta) before scanning.
    const sealRecorder = changes.record();
    // A base has nothing to seal before it: whatever is pending is read and copied like the rest.
    const present = track(base ? new DeltaMap(g.regionCount) : changes.pending());
    let presentSeq: number | undefined;
    if (!present.isEmpty() && !dryRun) {
      const writer = new DeltaWriter(repo, pit, latest + 1, { signal, packsInFlight: options.packsInFlight, trust });
      const sealStart = clock();
      await read(present.regions(), () => NEVER_DIGEST, (region, result) => writer.apply(region, result));
      presentSeq = latest = await commit(writer, 'host', sealStart);
      changes.committed(track(present.clone().subtract(track(sealRecorder.snapshot()))));
    }
    sealRecorder.stop().dispose();
    const scanStartSeq = latest;

    // Claims 1, 2, 4 (5, 6 with a DRL): scan and compare, recording host writes (claims 7, 8).
    const scanStart = clock();
    const scanRecorder = changes.record();
    const toScan = drl === undefined ? undefined : track(drl.dirty());
    if (dryRun && toScan !== undefined) toScan.subtract(present);
    const compare = track(new DeltaMap(g.regionCount));
    let scanned = 0;
    progress.phase('scan', toScan === undefined ? g.volumeSize : toScan.count() * g.regionSize);
    const regions = toScan?.regions() ?? allRegions(g.regionCount);
    const skip = dryRun ? present : undefined; // a dry run cannot seal them: they are known changes, not discrepancies
    await read(
      skip === undefined ? regions : filter(regions, (r) => !skip.has(r)),
      (region) => (pit.isZero(region) ? null : pit.digest(region)),
      async (region, result) => {
        if (result.status !== 'same') compare.set(region);
        scanned++;
        await hooks.afterScanRead?.(region);
      },
      (_region, length) => progress.advance(length),
    );
    progress.done();
    const scanDelta = track(scanRecorder.stop());
    // Claims 7, 8: the revised compare delta map.
    const revised = track(compare.clone().subtract(scanDelta));

    // Claim 11: walk back from the newest delta before the scan, marking suspects.
    const suspectDetails: SuspectReport[] = [];
    const unexplained = track(revised.clone());
    for (let seq = scanStartSeq; seq >= 1 && !unexplained.isEmpty(); seq--) {
      suspectDetails.push({ seq, regions: firstRegions(unexplained) });
      // A missing delta's regions are unknown: explain nothing by it and go on (more suspects, never fewer).
      if (!chain.has(seq)) continue;
      const delta = await repo.readDelta(seq, signal);
      unexplained.subtract(delta.changed);
      delta.changed.dispose();
    }
    const reachedChainStart = !base && !unexplained.isEmpty(); // a base has no chain to reach

    // Regions whose stored bytes a verify found damaged are copied again too.
    const damaged = track(new DeltaMap(g.regionCount));
    if (trust.damaged.size > 0) {
      for (let region = 0; region < g.regionCount; region++) {
        const location = pit.location(region);
        if (location !== undefined && trust.damaged.has(locationId(location))) damaged.set(region);
      }
    }

    // Claims 9, 10: copy, then append the fix-up delta (revised compare ∪ host changes).
    let fixupSeq: number | undefined;
    let writtenDuringCopy = 0;
    let repaired = 0;
    const copySet = track(revised.clone().union(damaged));
    if (!dryRun && (!copySet.isEmpty() || base)) {
      const copyStart = clock();
      const copyRecorder = changes.record();
      await hooks.copyStarted?.();
      const writer = new DeltaWriter(repo, pit, latest + 1, { signal, packsInFlight: options.packsInFlight, trust });
      progress.phase('copy', copySet.count() * g.regionSize);
      await read(copySet.regions(), () => NEVER_DIGEST, async (region, result) => {
        await writer.apply(region, result);
        progress.advance(g.regionSize);
        await hooks.afterCopyRead?.(region);
      });
      const hostChange = track(copyRecorder.stop());
      writtenDuringCopy = hostChange.count();
      // The fix-up holds each host-changed region's content as of now.
      const finalRecorder = changes.record();
      await read(hostChange.regions(), () => NEVER_DIGEST, (region, result) => writer.apply(region, result));
      repaired = writer.changed.count();
      fixupSeq = latest = await commit(writer, base ? 'base' : 'fixup', base ? scanStart : copyStart);
      changes.committed(track(writer.changed.clone().subtract(track(finalRecorder.stop()))));
      progress.done();
    }

    // The DRL keeps only what is still uncommitted.
    if (!dryRun && drl !== undefined && toScan !== undefined) {
      await drl.clear(track(toScan.clone().subtract(track(changes.pending()))));
    }

    // A base is one instant only if the host did not write while it was read.
    const writtenDuringBase = baseRecorder === undefined ? undefined : track(baseRecorder.stop());
    const baseIsFuzzy = writtenDuringBase !== undefined && !writtenDuringBase.isEmpty() && fixupSeq !== undefined;
    if (baseIsFuzzy) suspectDetails.push({ seq: fixupSeq!, regions: firstRegions(writtenDuringBase) });

    const end = clock();
    const suspect = suspectDetails.map((s) => s.seq);
    // What the scan record stores and the result reports alike.
    const counts = {
      presentSeq,
      scanStartSeq,
      scanned,
      discrepancies: compare.count(),
      writtenDuringScan: scanDelta.count(),
      revised: revised.count(),
      writtenDuringCopy,
      repaired,
      fixupSeq,
      suspect,
    };
    let record: string | undefined;
    if (!dryRun) {
      record = scanRecordKey(end);
      if (suspectDetails.length > 0) {
        const reason = baseIsFuzzy
          ? 'the base was read while the host wrote: it is no one instant; the regions written meanwhile are in the next point in time'
          : reachedChainStart
            ? 'the primary differs from it in regions that no delta records: every point in time is suspect'
            : 'the primary differs from it in regions this or an older delta records, and no later delta rewrote them';
        const marks: TrustMark[] = suspectDetails.map((s) => ({ seq: s.seq, kind: 'suspect', reason, regions: s.regions }));
        // `latest` is the newest point this scan has seen (its fix-up, if it wrote one).
        await putMarks(store, { created: end, record, marks, damaged: [] }, latest, signal);
      }
      const scanRecord: ScanRecord = { start: scanStart, end, source: options.source, dryRun, drl: drl !== undefined, ...counts };
      await putScanRecord(store, record, scanRecord, signal);
    }
    return {
      ...counts,
      reuploaded: damaged.count(),
      suspectDetails,
      reachedChainStart,
      bytesFetched: store.bytesFetched,
      dryRun,
      record,
      discrepantRegions: firstRegions(compare),
      missingDeltas: chain.missing,
      unreadableMarks: trust.unreadable,
    };
  } finally {
    await lock?.release().catch(() => undefined);
    for (const map of maps) map.dispose();
    await opened?.close();
    await pool.close();
    await volume.handle.close();
  }
}

function* filter(regions: Iterable<number>, keep: (region: number) => boolean): Generator<number> {
  for (const region of regions) if (keep(region)) yield region;
}
