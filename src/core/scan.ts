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
import { CdpError, FormatError, InvalidArgumentError, NoPointInTimeError, throwIfAborted } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import type { PitPage } from '../model/pages.js';
import type { Block, ChainIndex } from '../repo/chain-index.js';
import { MAX_REGIONS_LISTED, type ScanRecord, type TrustMark } from '../repo/records.js';
import { type WriterLock, acquireWriterLock, forceUnlock } from '../repo/lock.js';
import type { Compression } from '../repo/pieces.js';
import { Repository, viewForWriting } from '../repo/repository.js';
import { putMarks, putScanRecord, readWriterTrust, scanRecordKey, storedDamaged } from '../repo/trust.js';
import { CountingStore } from '../store/counting.js';
import type { ObjectStore } from '../store/types.js';
import { type ChangeSource, QuiescentSource } from '../volume/changes.js';
import { DirtyRegionLog } from '../volume/dirty-region-log.js';
import { RegionPool } from '../volume/region-pool.js';
import { regionsWithData } from '../volume/extents.js';
import { openVolume } from '../volume/source.js';
import { DeltaCommitter } from './delta-committer.js';
import { NEVER_DIGEST, readRegions, regionsWithPages } from './delta-writer.js';
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
  /** How the fix-up delta compresses what it stores (default: the repository's config). */
  compression?: Compression;
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


export async function scan(options: ScanOptions): Promise<ScanResult> {
  const { signal } = options;
  const store = new CountingStore(options.store);
  const progress = options.progress ?? silentProgress;
  const clock = options.clock ?? Date.now;
  const dryRun = options.dryRun === true;
  const hooks = options.hooks ?? {};
  throwIfAborted(signal);
  const repo = await Repository.open(store, signal);
  if (options.compression !== undefined) repo.compression = options.compression;
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
  const pool = new RegionPool(options.workers, repo.identity);
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
    const index = await repo.index(signal);
    let latest = index.latest;
    const base = options.base === true;
    if (latest === 0 && !base) throw new NoPointInTimeError(`${store.location} has no points in time to compare with: run cdp-s3 backup first`);
    if (latest !== 0 && base) throw new InvalidArgumentError(`${store.location} has a base already (point in time ${latest})`);
    if (base && dryRun) throw new InvalidArgumentError('a base cannot be taken as a dry run');
    const baseRecorder = base ? changes.record() : undefined;
    const trust = await readWriterTrust(store, signal);
    const committer = new DeltaCommitter({
      repo,
      index,
      head: await viewForWriting(repo, index, 'scan', signal),
      lock: activeLock,
      trust,
      sourcePath,
      clock,
      packsInFlight: options.packsInFlight,
      signal,
    });
    const read = (
      regions: Iterable<number> | AsyncIterable<number>,
      expected: (r: number) => Uint8Array | null,
      onResult: Parameters<typeof readRegions>[0]['onResult'],
      onRead?: Parameters<typeof readRegions>[0]['onRead'],
      dataRegions?: DeltaMap,
    ) => readRegions({ pool, fd: volume.handle.fd, geometry: g, regions, expected, onResult, onRead, dataRegions, readAhead: options.readAhead, signal });

    // Claim 3: seal the present delta map (changes since the previous delta) before scanning.
    const sealRecorder = changes.record();
    // A base has nothing to seal before it: whatever is pending is read and copied like the rest.
    const present = track(base ? new DeltaMap(g.regionCount) : changes.pending());
    let presentSeq: number | undefined;
    if (!present.isEmpty() && !dryRun) {
      const writer = committer.begin();
      const sealStart = clock();
      await read(present.regions(), () => NEVER_DIGEST, (region, result) => writer.apply(region, result));
      presentSeq = latest = (await committer.commit(writer, 'host', sealStart)).seq;
      changes.committed(track(present.clone().subtract(track(sealRecorder.snapshot()))));
    }
    sealRecorder.stop().dispose();
    const scanStartSeq = latest;
    // Claim 3: the PIT map of the newest point, which the scan compares with (claim 4).
    const pit = committer.head;

    // Claims 1, 2, 4 (5, 6 with a DRL): scan and compare, recording host writes (claims 7, 8).
    const scanStart = clock();
    const scanRecorder = changes.record();
    const toScan = drl === undefined ? undefined : track(drl.dirty());
    if (dryRun && toScan !== undefined) toScan.subtract(present);
    // A dry run cannot seal the present delta: its regions are known changes, not discrepancies.
    const wanted = dryRun && !present.isEmpty() ? track((toScan ?? fullMap(g.regionCount, track)).clone().subtract(present)) : toScan;
    const compare = track(new DeltaMap(g.regionCount));

    progress.phase('scan', toScan === undefined ? g.volumeSize : toScan.count() * g.regionSize);
    let page: PitPage | undefined;
    // A sparse file's holes are zeros: compared without reading them.
    const dataRegions = regionsWithData(volume.handle.fd, g, volume.isBlockDevice);
    if (dataRegions !== undefined) track(dataRegions);
    await read(
      regionsWithPages(pit, wanted, (p) => (page = p), signal, dataRegions),
      (region) => (page!.isZero(region) ? null : page!.digest(region)),
      async (region, result) => {
        if (result.status !== 'same') compare.set(region);
        await hooks.afterScanRead?.(region);
      },
      (_region, length) => progress.advance(length),
      dataRegions,
    );
    progress.done();
    // Every region of the scan set was compared: read, or a hole compared as zeros.
    const scanned = wanted === undefined ? g.regionCount : wanted.count();
    const scanDelta = track(scanRecorder.stop());
    // Claims 7, 8: the revised compare delta map.
    const revised = track(compare.clone().subtract(scanDelta));
    // Regions that differ and are not repaired here (the host wrote them during the scan, or a
    // dry run repairs nothing): their stored version is not what the primary held before the
    // writes the change source tracks, so it must ship them whole, not as patches of those writes.
    (changes as ChangeSource).distrust?.(dryRun ? compare : track(compare.clone().intersect(scanDelta)));

    // Claim 11: walk back from the newest delta before the scan, marking suspects.
    const unexplained = track(revised.clone());
    const suspectDetails = base ? [] : await walkSuspects(repo, index, scanStartSeq, unexplained, signal);
    const reachedChainStart = !base && !unexplained.isEmpty(); // a base has no chain to reach

    // Regions whose stored bytes a verify found damaged are copied again too.
    const damaged = track(new DeltaMap(g.regionCount));
    if (trust.damaged.size > 0) {
      for await (const p of pit.pages(signal)) {
        for (let region = p.first; region < p.first + p.count; region++) {
          if (storedDamaged(trust.damaged, p.stored(region))) damaged.set(region);
        }
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
      const writer = committer.begin();
      progress.phase('copy', copySet.count() * g.regionSize);
      await read(copySet.regions(), () => NEVER_DIGEST, async (region, result) => {
        await writer.apply(region, result);
        await writer.closeBelow(region);
        progress.advance(g.regionSize);
        await hooks.afterCopyRead?.(region);
      });
      const hostChange = track(copyRecorder.stop());
      writtenDuringCopy = hostChange.count();
      // The fix-up holds each host-changed region's content as of now.
      const finalRecorder = changes.record();
      await read(hostChange.regions(), () => NEVER_DIGEST, (region, result) => writer.apply(region, result));
      repaired = writer.changed.count();
      fixupSeq = latest = (await committer.commit(writer, base ? 'base' : 'fixup', base ? scanStart : copyStart)).seq;
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
      missingDeltas: index.missingDeltas(),
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

/** Every region (for a dry run's scan set less the present delta). */
function fullMap(regionCount: number, track: (map: DeltaMap) => DeltaMap): DeltaMap {
  const map = track(new DeltaMap(regionCount));
  map.setRange(0, regionCount);
  return map;
}

/**
 * Claim 11: from point `from` back, mark each delta suspect and subtract its changed regions
 * from `unexplained`, until it is empty. A span whose regions cannot empty it marks all its
 * points at once and subtracts their union (the same as one by one); only the span in which the
 * walk ends is descended into. A delta that is missing explains nothing (more suspects, never fewer).
 * Points removed by forget are not marked; a span holding any is not descended into (their
 * deltas may be pruned, so where in it a region changed is not known): its kept points are all
 * marked and its regions subtracted, as when the walk goes past it.
 */
async function walkSuspects(repo: Repository, index: ChainIndex, from: number, unexplained: DeltaMap, signal?: AbortSignal): Promise<SuspectReport[]> {
  const out: SuspectReport[] = [];
  const g = repo.geometry;
  const regionsOf = async (block: Block): Promise<DeltaMap | undefined> => {
    const stored = await index.stored(block.level, block.last, signal); // its generation; nothing for a compacted-away position
    if (stored === undefined) return undefined;
    try {
      const run = await repo.readRun(stored, signal);
      const map = new DeltaMap(g.regionCount);
      for await (const region of run.regions(signal)) map.set(region);
      return map;
    } catch (error) {
      if (error instanceof FormatError) return undefined;
      throw error;
    }
  };
  const walk = async (block: Block): Promise<void> => {
    if (unexplained.isEmpty()) return;
    const regions = await regionsOf(block);
    if (block.level === 0) {
      if (!index.forgotten.has(block.last)) out.push({ seq: block.last, regions: firstRegions(unexplained) });
      if (regions !== undefined) unexplained.subtract(regions);
      regions?.dispose();
      return;
    }
    if (regions !== undefined) {
      const left = unexplained.clone().subtract(regions);
      if (!left.isEmpty() || index.forgotten.within(block.first, block.last).length > 0) {
        // The walk goes on past this span (or cannot look inside it): every point in it is suspect.
        const shown = firstRegions(left.isEmpty() ? unexplained : left);
        for (let seq = block.last; seq >= block.first; seq--) {
          if (index.forgotten.has(seq)) seq = index.forgotten.keptAtOrBefore(seq) + 1;
          else out.push({ seq, regions: shown });
        }
        unexplained.subtract(regions);
        left.dispose();
        regions.dispose();
        return;
      }
      left.dispose();
      regions.dispose();
    }
    const size = repo.fanout ** (block.level - 1);
    for (let last = block.last; last >= block.first && !unexplained.isEmpty(); last -= size) await walk(index.block(block.level - 1, last));
  };
  for (const block of decompose(index.fanout, from).reverse()) {
    if (unexplained.isEmpty()) break;
    await walk(index.block(block.level, block.last));
  }
  return out;
}

/** Points 1 … p as aligned blocks, largest first (what ChainIndex.cover resolves). */
function decompose(fanout: number, p: number): Array<{ level: number; last: number }> {
  const out: Array<{ level: number; last: number }> = [];
  let level = 0;
  while (fanout ** (level + 1) <= p) level++;
  let pos = 0;
  for (; level >= 0; level--) for (const size = fanout ** level; pos + size <= p; pos += size) out.push({ level, last: pos + size });
  return out;
}
