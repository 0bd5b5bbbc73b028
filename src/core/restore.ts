// restore: write one point in time of the volume to a file, a block device or stdout.
//
// planRestore chooses the point (passing over untrusted and unbuildable ones) and opens its PIT
// map as a paged view; nothing is read beyond the runs' roots. planTotals walks the map for
// --dry-run. executeRestore streams the map page by page into the RegionFetcher (merged ranged
// GETs, every region verified against its SHA-256 on a worker thread, which writes it). A file
// target is written under a temporary name, fsynced and renamed, so an interrupted restore never
// leaves a file that looks complete.

import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { constants } from 'node:fs';
import { type FileHandle, open, rename, stat, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { AbortedError, CdpError, IntegrityError, throwIfAborted } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import { regionLength } from '../model/regions.js';
import type { ChainIndex } from '../repo/chain-index.js';
import { seqName } from '../repo/keys.js';
import type { PitView } from '../repo/pit-view.js';
import { Repository } from '../repo/repository.js';
import { readTrust, unreadableCutoff } from '../repo/trust.js';
import type { ObjectStore } from '../store/types.js';
import { RegionIoError, RegionPool } from '../volume/region-pool.js';
import { pwriteFully } from '../util/positional-io.js';
import { WritebackPacer, syncDirectory } from '../util/durable-file.js';
import { openVolume, sameStorage } from '../volume/source.js';
import { readRegions, regionsWithPages } from './delta-writer.js';
import { type ChosenPoint, type PointSelector, choosePoint } from './points.js';
import { type Progress, silentProgress } from './progress.js';
import { type PlanCounts, RegionFetcher, emptyCounts, planRanges, storedRegions } from './region-fetcher.js';

export interface RestorePlan {
  location: string;
  seq: number;
  /** The point in time, ISO 8601 UTC. */
  time: string;
  kind: string;
  volumeSize: number;
  regionSize: number;
  regions: number;
  /** Where the primary was read from for this point in time, when known. */
  source: { host: string; path: string } | undefined;
  /** Newer points at or before the request passed over because they are suspect, damaged or cannot be built. */
  skipped: Array<{ seq: number; kinds: string[] }>;
  /** Marks on the chosen point itself (only with allowSuspect). */
  untrusted: string[];
}

/** What a restore downloads: counted by planTotals (dry run) or by the restore itself. */
export type RestoreTotals = PlanCounts;

export interface PlanRestoreOptions {
  store: ObjectStore;
  at: PointSelector;
  /** Take the newest point at or before `at` even if it is suspect or damaged. */
  allowSuspect?: boolean;
  signal?: AbortSignal;
  now?: number;
}

interface PlanContext {
  repo: Repository;
  view: PitView;
}

const contexts = new WeakMap<RestorePlan, PlanContext>();

/**
 * Opens the repository, chooses the point in time (passing over suspect and damaged ones unless
 * allowSuspect) and opens its PIT map: what restore and serve share.
 */
export async function loadPoint(options: PlanRestoreOptions): Promise<{ repo: Repository; index: ChainIndex; view: PitView; chosen: ChosenPoint }> {
  const repo = await Repository.open(options.store, options.signal);
  const [trust, index] = await Promise.all([readTrust(options.store, options.signal), repo.index(options.signal)]);
  const chosen = await choosePoint(repo, index, options.at, {
    signal: options.signal,
    now: options.now,
    untrusted: trust.marks,
    unreadableUntil: unreadableCutoff(trust, index.latest),
    allowSuspect: options.allowSuspect,
  });
  const view = await repo.view(index, chosen.seq, { signal: options.signal });
  return { repo, index, view, chosen };
}

export async function planRestore(options: PlanRestoreOptions): Promise<RestorePlan> {
  const { repo, view, chosen } = await loadPoint(options);
  const g = repo.geometry;
  const plan: RestorePlan = {
    location: options.store.location,
    seq: chosen.seq,
    time: new Date(chosen.summary.end).toISOString(),
    kind: chosen.summary.kind,
    volumeSize: g.volumeSize,
    regionSize: g.regionSize,
    regions: g.regionCount,
    source: chosen.source,
    skipped: chosen.skipped,
    untrusted: chosen.untrusted,
  };
  contexts.set(plan, { repo, view });
  return plan;
}

function contextOf(plan: RestorePlan): PlanContext {
  const context = contexts.get(plan);
  if (context === undefined) throw new CdpError('INVALID_ARGUMENT', 'a restore needs a plan made by planRestore');
  return context;
}

/** What restoring the plan downloads, counted from the map without fetching (--dry-run). */
export async function planTotals(plan: RestorePlan, signal?: AbortSignal): Promise<RestoreTotals> {
  const counts = emptyCounts();
  for await (const _ of planRanges(storedRegions(contextOf(plan).view, counts, undefined, signal), counts));
  return counts;
}

export interface ExecuteRestoreOptions {
  /** A file path, a block device, or "-" for standard output. */
  to: string;
  /**
   * Replace an existing file, write onto the volume this repository protects, or (with
   * reuseTarget) overwrite a file whose size is not the volume's.
   */
  force?: boolean;
  signal?: AbortSignal;
  progress?: Progress;
  /** Ranged GETs in flight at once. Default 8. */
  fetchesInFlight?: number;
  /** Largest ranged GET (neighbouring regions merged up to it). Default 8 MiB. */
  rangeBytes?: number;
  workers?: number;
  /** Where stdout restores write; tests capture it. */
  stdout?: NodeJS.WritableStream;
  /**
   * The target already holds an older copy of the volume: hash its regions and download and
   * write only those that differ from the point in time (in place, not atomically). A file must
   * be exactly the volume's size (or `force`), a block device at least that size.
   */
  reuseTarget?: boolean;
}

export interface RestoreResult {
  seq: number;
  time: string;
  target: string;
  targetKind: 'file' | 'block-device' | 'stdout';
  bytesWritten: number;
  /** With reuseTarget: regions that already matched and were left alone. */
  regionsReused?: number;
  bytesDownloaded: number;
  /** What the restore fetched: regions, requests, packs. */
  totals: RestoreTotals;
  verified: boolean;
}

export async function executeRestore(plan: RestorePlan, options: ExecuteRestoreOptions): Promise<RestoreResult> {
  const context = contextOf(plan);
  throwIfAborted(options.signal);
  if (options.to === '-') return restoreToStream(plan, context, options);
  await refuseProtectedSource(plan, options);
  if (options.reuseTarget === true) return restoreInPlace(plan, context, options);
  const existing = await stat(options.to).catch(() => undefined);
  if (existing?.isBlockDevice() === true) return restoreToDevice(plan, context, options);
  if (existing !== undefined && !existing.isFile()) throw new CdpError('TARGET', `${options.to} is neither a file nor a block device`);
  if (existing !== undefined && options.force !== true) {
    throw new CdpError('TARGET', `${options.to} already exists; pass --force to replace it, or choose another --to`);
  }
  return restoreToFile(plan, context, options);
}

async function refuseProtectedSource(plan: RestorePlan, options: ExecuteRestoreOptions): Promise<void> {
  if (plan.source === undefined || plan.source.host !== hostname() || options.force === true) return;
  // By identity, not by name: a symlink, a hard link or another name of the same device is the same disk.
  if (await sameStorage(options.to, plan.source.path)) {
    throw new CdpError(
      'TARGET',
      `${options.to} is the disk this repository protects; restoring onto it overwrites the live volume: pass --force if that is intended`,
    );
  }
}

/** Fetches the regions `wanted` picks (all by default), verifies each on a worker and writes it at its place(s) in fd. */
async function fetchAndWrite(
  context: PlanContext,
  pool: RegionPool,
  fd: number,
  options: ExecuteRestoreOptions,
  wanted?: (region: number) => boolean,
): Promise<RestoreTotals> {
  const progress = options.progress ?? silentProgress;
  const regionSize = context.repo.geometry.regionSize;
  const fetcher = new RegionFetcher(context.repo, pool, { fetchesInFlight: options.fetchesInFlight, signal: options.signal });
  const counts = emptyCounts();
  const writeback = new WritebackPacer(fd);
  try {
    await fetcher.run(planRanges(storedRegions(context.view, counts, wanted, options.signal), counts, { maxRangeBytes: options.rangeBytes }), {
      writes: (slice) => slice.regions.map((region): [number, number] => [fd, region * regionSize]),
      onRange: ({ range }) => {
        let written = 0;
        for (const slice of range.slices) written += slice.length * slice.regions.length;
        progress.advance(written);
        writeback.wrote(written);
      },
    });
    await writeback.settle();
  } catch (error) {
    await writeback.settle().catch(() => {});
    if (options.signal?.aborted === true) throw new AbortedError('restore cancelled', { cause: error });
    throw targetError(error, options.to);
  }
  return counts;
}

async function restoreToFile(plan: RestorePlan, context: PlanContext, options: ExecuteRestoreOptions): Promise<RestoreResult> {
  const dir = dirname(options.to);
  const temp = join(dir, `.${basename(options.to)}.cdp-s3-partial-${randomBytes(4).toString('hex')}`);
  let handle: FileHandle;
  try {
    handle = await open(temp, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
  } catch (error) {
    throw targetError(error, options.to);
  }
  const pool = new RegionPool(options.workers, context.repo.identity);
  const progress = options.progress ?? silentProgress;
  let renamed = false;
  try {
    // A sparse file of the volume's size: zero regions stay holes.
    await handle.truncate(plan.volumeSize);
    progress.phase('restore', plan.volumeSize);
    const totals = await fetchAndWrite(context, pool, handle.fd, options);
    await handle.sync();
    await handle.close();
    throwIfAborted(options.signal);
    await rename(temp, options.to);
    renamed = true;
    await syncDirectory(dir);
    progress.done();
    return restoreResult(plan, options.to, 'file', totals);
  } catch (error) {
    throw targetError(error, options.to);
  } finally {
    await pool.close();
    await handle.close().catch(() => {});
    if (!renamed) await unlink(temp).catch(() => {});
  }
}

/** Writes zeros over `region` (a device or a reused target holds old data there). */
async function zeroRegion(fd: number, plan: RestorePlan, region: number, zeros: Uint8Array): Promise<number> {
  const length = regionLength({ volumeSize: plan.volumeSize, regionSize: plan.regionSize, regionCount: plan.regions }, region);
  await pwriteFully(fd, zeros.subarray(0, length), region * plan.regionSize);
  return length;
}

async function restoreToDevice(plan: RestorePlan, context: PlanContext, options: ExecuteRestoreOptions): Promise<RestoreResult> {
  const device = await openVolume(options.to, 'write');
  const pool = new RegionPool(options.workers, context.repo.identity);
  const progress = options.progress ?? silentProgress;
  const g = context.repo.geometry;
  try {
    if (device.size < plan.volumeSize) {
      throw new CdpError('TARGET', `${options.to} holds ${device.size} bytes, the volume needs ${plan.volumeSize}: use a larger device`);
    }
    progress.phase('restore', plan.volumeSize);
    // Zero regions must be written: the device holds old data there.
    const zeros = new Uint8Array(plan.regionSize);
    for await (const page of context.view.pages(options.signal)) {
      for (let region = page.first; region < page.first + page.count; region++) {
        if (page.isZero(region)) progress.advance(await zeroRegion(device.handle.fd, plan, region, zeros));
      }
    }
    const totals = await fetchAndWrite(context, pool, device.handle.fd, options);
    await device.handle.sync();
    progress.done();
    // Read back and verify every region against the PIT map.
    progress.phase('verify', plan.volumeSize);
    let page: Awaited<ReturnType<PitView['page']>> | undefined;
    await readRegions({
      pool,
      fd: device.handle.fd,
      geometry: g,
      regions: regionsWithPages(context.view, undefined, (p) => (page = p), options.signal),
      expected: (region) => (page!.isZero(region) ? null : page!.digest(region)),
      onResult: (region, result) => {
        if (result.status !== 'same') throw new IntegrityError(`${options.to} region ${region} read back`, 'the restored bytes', 'different bytes');
      },
      onRead: (_region, length) => progress.advance(length),
      signal: options.signal,
    });
    progress.done();
    return restoreResult(plan, options.to, 'block-device', totals);
  } catch (error) {
    throw targetError(error, options.to);
  } finally {
    await pool.close();
    await device.handle.close();
  }
}

/**
 * --reuse-target: hash the target's regions (both cores), then download and write only the ones
 * that differ from the point in time. The target is changed in place; rerun after a crash.
 */
async function restoreInPlace(plan: RestorePlan, context: PlanContext, options: ExecuteRestoreOptions): Promise<RestoreResult> {
  const target = await openVolume(options.to, 'write').catch((error: unknown) => {
    throw error instanceof CdpError && error.code === 'SOURCE'
      ? new CdpError('TARGET', `--reuse-target: ${error.message.replace(/^\S+ /, `${options.to} `)}`, { cause: error })
      : error;
  });
  const pool = new RegionPool(options.workers, context.repo.identity);
  const progress = options.progress ?? silentProgress;
  const g = context.repo.geometry;
  const differ = new DeltaMap(g.regionCount);
  try {
    if (target.size < plan.volumeSize && target.isBlockDevice) {
      throw new CdpError('TARGET', `${options.to} holds ${target.size} bytes, the volume needs ${plan.volumeSize}: use a larger device`);
    }
    // A file of another size is not plausibly an older copy of this volume (it may be anything):
    // overwriting it in place needs --force.
    if (!target.isBlockDevice && target.size !== plan.volumeSize && options.force !== true) {
      throw new CdpError(
        'TARGET',
        `${options.to} holds ${target.size} bytes, not the volume's ${plan.volumeSize}, so it is no older copy of this volume: ` +
          'pass --force to overwrite it anyway, or choose another --to',
      );
    }
    // With --force, a shorter file reads as differing past its end; make it the volume's size first.
    if (!target.isBlockDevice && target.size !== plan.volumeSize) await target.handle.truncate(plan.volumeSize);
    progress.phase('compare', plan.volumeSize);
    let page: Awaited<ReturnType<PitView['page']>> | undefined;
    const zerosToWrite: number[] = [];
    await readRegions({
      pool,
      fd: target.handle.fd,
      geometry: g,
      regions: regionsWithPages(context.view, undefined, (p) => (page = p), options.signal),
      expected: (region) => (page!.isZero(region) ? null : page!.digest(region)),
      onResult: (region, result) => {
        if (result.status === 'same') return;
        differ.set(region);
        if (context.view.cachedPageOf(region)?.isZero(region) === true) zerosToWrite.push(region);
      },
      onRead: (_region, length) => progress.advance(length),
      signal: options.signal,
    });
    progress.done();
    progress.phase('restore', differ.count() * plan.regionSize);
    const zeros = new Uint8Array(plan.regionSize);
    for (const region of zerosToWrite) progress.advance(await zeroRegion(target.handle.fd, plan, region, zeros));
    const totals = await fetchAndWrite(context, pool, target.handle.fd, options, (region) => differ.has(region));
    await target.handle.sync();
    progress.done();
    return { ...restoreResult(plan, options.to, target.isBlockDevice ? 'block-device' : 'file', totals), regionsReused: g.regionCount - differ.count() };
  } catch (error) {
    throw targetError(error, options.to);
  } finally {
    differ.dispose();
    await pool.close();
    await target.handle.close();
  }
}

/** Standard output: regions in volume order, each verified before it is written. */
async function restoreToStream(plan: RestorePlan, context: PlanContext, options: ExecuteRestoreOptions): Promise<RestoreResult> {
  const out = options.stdout ?? process.stdout;
  const pool = new RegionPool(options.workers, context.repo.identity);
  const progress = options.progress ?? silentProgress;
  // A failed write (the reader closed the pipe: EPIPE) is reported to the write's callback and
  // by an 'error' event, possibly after write() returned; without a listener Node throws the
  // event as an uncaught exception. The first failure stops the fetches and any wait for 'drain'.
  const stop = new AbortController();
  const signal = options.signal === undefined ? stop.signal : AbortSignal.any([options.signal, stop.signal]);
  let outputError: unknown;
  const onOutputError = (error: unknown): void => {
    outputError ??= error;
    stop.abort();
  };
  out.on('error', onOutputError);
  const fetcher = new RegionFetcher(context.repo, pool, { fetchesInFlight: options.fetchesInFlight, signal });
  const counts = emptyCounts();
  // Stored regions arrive in volume order, one region a slice; zero regions are written between them.
  const fetched = fetcher.ordered(planRanges(storedRegions(context.view, counts, undefined, signal), counts, { oneRegionPerSlice: true, maxRangeBytes: options.rangeBytes }));
  const zeros = new Uint8Array(plan.regionSize);
  let flushed: Promise<void> = Promise.resolve();
  const write = async (bytes: Uint8Array): Promise<void> => {
    let full = false;
    flushed = new Promise<void>((resolve) => {
      full = !out.write(bytes, (error) => {
        if (error != null) onOutputError(error);
        resolve();
      });
    });
    if (full) await once(out, 'drain', { signal });
    progress.advance(bytes.length);
  };
  try {
    progress.phase('restore', plan.volumeSize);
    let current: { bytes: Uint8Array; slices: Array<{ at: number; length: number; regions: number[] }>; next: number } | undefined;
    for await (const page of context.view.pages(signal)) {
      for (let region = page.first; region < page.first + page.count && outputError === undefined; region++) {
        if (page.isZero(region)) {
          await write(zeros.subarray(0, regionLength(context.repo.geometry, region)));
          continue;
        }
        if (current === undefined || current.next >= current.slices.length) {
          const next = await fetched.next();
          if (next.done === true) throw new CdpError('INTEGRITY', `region ${region} was planned but not fetched`);
          current = { bytes: next.value.bytes!, slices: next.value.range.slices, next: 0 };
        }
        const slice = current.slices[current.next++]!;
        // Written as a copy: the range's buffer is reused once the next range is asked for.
        await write(Buffer.from(current.bytes.subarray(slice.at, slice.at + slice.length)));
      }
      throwIfAborted(options.signal);
      if (outputError !== undefined) break;
    }
    // Done only when the stream has taken the last bytes.
    await flushed;
    if (outputError !== undefined) throw outputFailure(outputError);
    progress.done();
    return restoreResult(plan, '-', 'stdout', counts);
  } catch (error) {
    if (outputError !== undefined) throw outputFailure(outputError);
    throw options.signal?.aborted === true ? new AbortedError('restore cancelled', { cause: error }) : error;
  } finally {
    // A failed stream may still emit 'error' later: keep the listener then.
    if (outputError === undefined) out.off('error', onOutputError);
    await fetched.return(undefined);
    await pool.close();
  }
}

/** Why writing standard output failed: its reader went away (quietly, in the CLI), or an I/O error. */
function outputFailure(error: unknown): CdpError {
  const code = (error as { code?: string }).code;
  if (code === 'EPIPE' || code === 'ERR_STREAM_DESTROYED') {
    return new CdpError('OUTPUT_CLOSED', 'standard output was closed before the restore finished', { cause: error });
  }
  const mapped = targetError(error, 'standard output');
  if (mapped instanceof CdpError) return mapped;
  return new CdpError('TARGET', `writing standard output failed: ${(error as Error).message ?? String(error)}`, { cause: error });
}

function restoreResult(plan: RestorePlan, target: string, targetKind: RestoreResult['targetKind'], totals: RestoreTotals): RestoreResult {
  return { seq: plan.seq, time: plan.time, target, targetKind, bytesWritten: plan.volumeSize, bytesDownloaded: totals.downloadBytes, totals, verified: true };
}

function targetError(error: unknown, target: string): unknown {
  if (error instanceof CdpError) return error;
  const code = (error as { code?: string }).code;
  if (code === 'ENOSPC') return new CdpError('TARGET', `${target}: no space left on the target's disk; free space or restore elsewhere`, { cause: error });
  if (code === 'EACCES' || code === 'EPERM' || code === 'EROFS') {
    return new CdpError('TARGET', `${target} cannot be written (${code}); check permissions or choose another --to`, { cause: error });
  }
  if (code === 'ENOENT') return new CdpError('TARGET', `${dirname(target)} does not exist; create it or choose another --to`, { cause: error });
  if (error instanceof RegionIoError) return new CdpError('TARGET', `writing ${target} failed: ${error.message}`, { cause: error });
  return error;
}

export function describePlan(plan: RestorePlan): string {
  return `point in time ${seqName(plan.seq)} (${plan.time}, ${plan.kind})`;
}
