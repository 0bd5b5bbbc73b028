// restore: write one point in time of the volume to a file, a block device or stdout.
//
// planRestore is pure reading: which PIT, and which byte ranges of which packs hold its regions
// (neighbouring regions merged into one ranged GET). It backs --dry-run. executeRestore fetches
// the ranges in parallel, verifies every region against its SHA-256 on a worker thread, and
// writes it. A file target is written under a temporary name, fsynced and renamed, so an
// interrupted restore never leaves a file that looks complete.

import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { constants } from 'node:fs';
import { type FileHandle, open, rename, stat, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { AbortedError, CdpError, IntegrityError, throwIfAborted } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import { type Geometry, type PitMap, regionLength } from '../model/pit-map.js';
import { seqName } from '../repo/keys.js';
import { Repository } from '../repo/repository.js';
import { readTrust } from '../repo/trust.js';
import type { ObjectStore } from '../store/types.js';
import { RegionIoError, RegionPool } from '../volume/region-pool.js';
import { syncDirectory } from '../volume/durable-file.js';
import { openVolume, sameStorage } from '../volume/source.js';
import { readRegions } from './delta-writer.js';
import { type ChosenPoint, type PointSelector, choosePoint } from './points.js';
import { type Progress, silentProgress } from './progress.js';

/** Largest ranged GET: neighbouring regions of a pack are merged up to this size. */
const MAX_RANGE_BYTES = 8 * 1024 * 1024;

export interface RestoreSlice {
  /** Offset within the fetched range. */
  at: number;
  length: number;
  digest: Uint8Array;
  /** Regions of the volume that hold these bytes (several when deduplicated). */
  regions: number[];
}

export interface RestoreFetch {
  pack: string;
  offset: number;
  length: number;
  slices: RestoreSlice[];
}

export interface RestorePlan {
  location: string;
  seq: number;
  /** The point in time, ISO 8601 UTC. */
  time: string;
  kind: string;
  volumeSize: number;
  regionSize: number;
  regions: number;
  dataRegions: number;
  zeroRegions: number;
  /** Bytes downloaded (deduplicated regions are fetched once). */
  downloadBytes: number;
  packs: number;
  fetches: RestoreFetch[];
  /** Where the primary was read from for this point in time, when known. */
  source: { host: string; path: string } | undefined;
  /** Newer points at or before the request passed over because they are suspect or damaged. */
  skipped: Array<{ seq: number; kinds: string[] }>;
  /** Marks on the chosen point itself (only with allowSuspect). */
  untrusted: string[];
}

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
  pit: PitMap;
}

const contexts = new WeakMap<RestorePlan, PlanContext>();

/**
 * Opens the repository, chooses the point in time (passing over suspect and damaged ones unless
 * allowSuspect) and loads its PIT map: what restore and serve share. The caller disposes
 * `chosen.delta.changed`.
 */
export async function loadPoint(options: PlanRestoreOptions): Promise<{ repo: Repository; pit: PitMap; chosen: ChosenPoint }> {
  const repo = await Repository.open(options.store, options.signal);
  const [trust, chain] = await Promise.all([readTrust(options.store, options.signal), repo.listChain(options.signal)]);
  const chosen = await choosePoint(repo, options.at, {
    chain,
    signal: options.signal,
    now: options.now,
    untrusted: trust.marks,
    unreadableMarks: trust.unreadable,
    allowSuspect: options.allowSuspect,
  });
  const pit = await repo.loadPit(chosen.seq, { chain, signal: options.signal });
  return { repo, pit, chosen };
}

export async function planRestore(options: PlanRestoreOptions): Promise<RestorePlan> {
  const { repo, pit, chosen } = await loadPoint(options);
  const g = repo.geometry;
  const { fetches, downloadBytes, packs, zeroRegions } = planFetches(pit, g, () => true);
  const plan: RestorePlan = {
    location: options.store.location,
    seq: chosen.seq,
    time: new Date(chosen.delta.end).toISOString(),
    kind: chosen.delta.kind,
    volumeSize: g.volumeSize,
    regionSize: g.regionSize,
    regions: g.regionCount,
    dataRegions: g.regionCount - zeroRegions,
    zeroRegions,
    downloadBytes,
    packs,
    fetches,
    source: chosen.delta.source,
    skipped: chosen.skipped,
    untrusted: chosen.untrusted,
  };
  chosen.delta.changed.dispose();
  contexts.set(plan, { repo, pit });
  return plan;
}

/**
 * The ranged GETs that fetch the regions `wanted` picks: one slice per distinct stored location
 * (deduplicated regions are fetched once and written to each place), neighbouring slices of a
 * pack merged up to MAX_RANGE_BYTES.
 */
function planFetches(pit: PitMap, g: Geometry, wanted: (region: number) => boolean) {
  const byLocation = new Map<string, { pack: string; offset: number; length: number; region: number; regions: number[] }>();
  let zeroRegions = 0;
  for (let region = 0; region < g.regionCount; region++) {
    if (!wanted(region)) continue;
    const location = pit.location(region);
    if (location === undefined) {
      zeroRegions++;
      continue;
    }
    const id = `${location.pack}@${location.offset}`;
    const slot = byLocation.get(id);
    if (slot !== undefined) slot.regions.push(region);
    else byLocation.set(id, { ...location, length: regionLength(g, region), region, regions: [region] });
  }
  const byPack = new Map<string, Array<{ offset: number; length: number; region: number; regions: number[] }>>();
  for (const slot of byLocation.values()) {
    let list = byPack.get(slot.pack);
    if (list === undefined) byPack.set(slot.pack, (list = []));
    list.push(slot);
  }
  const fetches: RestoreFetch[] = [];
  let downloadBytes = 0;
  for (const [pack, slots] of byPack) {
    slots.sort((a, b) => a.offset - b.offset);
    let current: RestoreFetch | undefined;
    for (const slot of slots) {
      const contiguous = current !== undefined && current.offset + current.length === slot.offset && current.length + slot.length <= MAX_RANGE_BYTES;
      if (!contiguous) {
        current = { pack, offset: slot.offset, length: 0, slices: [] };
        fetches.push(current);
      }
      current!.slices.push({ at: current!.length, length: slot.length, digest: pit.digest(slot.region).slice(), regions: slot.regions });
      current!.length += slot.length;
      downloadBytes += slot.length;
    }
  }
  return { fetches, downloadBytes, packs: byPack.size, zeroRegions };
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
  verified: boolean;
}

export async function executeRestore(plan: RestorePlan, options: ExecuteRestoreOptions): Promise<RestoreResult> {
  const context = contexts.get(plan);
  if (context === undefined) throw new CdpError('INVALID_ARGUMENT', 'executeRestore needs a plan made by planRestore');
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

/** Fetches the ranges, verifies every region on a worker and writes it at its place(s) in fd. */
async function fetchAndWrite(
  plan: RestorePlan,
  context: PlanContext,
  pool: RegionPool,
  fd: number,
  options: ExecuteRestoreOptions,
  fetches: RestoreFetch[] = plan.fetches,
): Promise<number> {
  const progress = options.progress ?? silentProgress;
  const limit = options.fetchesInFlight ?? 8;
  const inFlight = new Set<Promise<void>>();
  // Range buffers go to a worker and come back; reusing them spares page faults on fresh memory.
  const spare: Uint8Array[] = [];
  let failure: unknown;
  let downloaded = 0;
  for (const fetch of fetches) {
    if (failure !== undefined || options.signal?.aborted === true) break;
    while (inFlight.size >= limit) await Promise.race(inFlight);
    const task = (async () => {
      const buffer = spare.pop() ?? new Uint8Array(MAX_RANGE_BYTES);
      const bytes = await context.repo.readPackRange(fetch.pack, fetch.offset, fetch.length, options.signal, buffer);
      const owned = bytes.buffer === buffer.buffer;
      downloaded += bytes.length;
      // One job per range: the worker verifies every region in it and writes those that match.
      const { bytes: back, mismatches } = await pool.verify(
        bytes,
        fetch.slices.map((slice) => ({
          at: slice.at,
          length: slice.length,
          expected: slice.digest,
          writes: slice.regions.map((region): [number, number] => [fd, region * plan.regionSize]),
        })),
        owned,
      );
      spare.push(owned ? new Uint8Array(back.buffer) : buffer);
      const bad = mismatches[0];
      if (bad !== undefined) {
        const slice = fetch.slices[bad.slice]!;
        throw new IntegrityError(
          `region ${slice.regions[0]} in ${fetch.pack} at ${fetch.offset + slice.at}`,
          Buffer.from(slice.digest).toString('hex'),
          Buffer.from(bad.digest).toString('hex'),
        );
      }
      for (const slice of fetch.slices) progress.advance(slice.length * slice.regions.length);
    })().catch((error: unknown) => {
      failure ??= error;
    });
    const tracked = task.finally(() => inFlight.delete(tracked));
    inFlight.add(tracked);
  }
  await Promise.all(inFlight);
  if (options.signal?.aborted === true) throw new AbortedError('restore cancelled');
  if (failure !== undefined) throw targetError(failure, options.to);
  return downloaded;
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
  const pool = new RegionPool(options.workers);
  const progress = options.progress ?? silentProgress;
  let renamed = false;
  try {
    // A sparse file of the volume's size: zero regions stay holes.
    await handle.truncate(plan.volumeSize);
    progress.phase('restore', plan.volumeSize - plan.zeroRegions * plan.regionSize);
    const downloaded = await fetchAndWrite(plan, context, pool, handle.fd, options);
    await handle.sync();
    await handle.close();
    throwIfAborted(options.signal);
    await rename(temp, options.to);
    renamed = true;
    await syncDirectory(dir);
    progress.done();
    return restoreResult(plan, options.to, 'file', downloaded);
  } catch (error) {
    throw targetError(error, options.to);
  } finally {
    await pool.close();
    await handle.close().catch(() => {});
    if (!renamed) await unlink(temp).catch(() => {});
  }
}

async function restoreToDevice(plan: RestorePlan, context: PlanContext, options: ExecuteRestoreOptions): Promise<RestoreResult> {
  const device = await openVolume(options.to, 'write');
  const pool = new RegionPool(options.workers);
  const progress = options.progress ?? silentProgress;
  const g: Geometry = { volumeSize: plan.volumeSize, regionSize: plan.regionSize, regionCount: plan.regions };
  try {
    if (device.size < plan.volumeSize) {
      throw new CdpError('TARGET', `${options.to} holds ${device.size} bytes, the volume needs ${plan.volumeSize}: use a larger device`);
    }
    progress.phase('restore', plan.volumeSize);
    // Zero regions must be written: the device holds old data there.
    const zeros = Buffer.alloc(plan.regionSize);
    for (let region = 0; region < plan.regions; region++) {
      if (context.pit.isZero(region)) {
        const length = regionLength(g, region);
        await device.handle.write(zeros, 0, length, region * plan.regionSize);
        progress.advance(length);
      }
    }
    const downloaded = await fetchAndWrite(plan, context, pool, device.handle.fd, options);
    await device.handle.sync();
    progress.done();
    // Read back and verify every region against the PIT map.
    progress.phase('verify', plan.volumeSize);
    await readRegions({
      pool,
      fd: device.handle.fd,
      geometry: g,
      regions: allRegions(g.regionCount),
      expected: (region) => (context.pit.isZero(region) ? null : context.pit.digest(region)),
      onResult: (region, result) => {
        if (result.status !== 'same') throw new IntegrityError(`${options.to} region ${region} read back`, 'the restored bytes', 'different bytes');
      },
      onRead: (_region, length) => progress.advance(length),
      signal: options.signal,
    });
    progress.done();
    return restoreResult(plan, options.to, 'block-device', downloaded);
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
  const pool = new RegionPool(options.workers);
  const progress = options.progress ?? silentProgress;
  const g: Geometry = { volumeSize: plan.volumeSize, regionSize: plan.regionSize, regionCount: plan.regions };
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
    await readRegions({
      pool,
      fd: target.handle.fd,
      geometry: g,
      regions: allRegions(g.regionCount),
      expected: (region) => (context.pit.isZero(region) ? null : context.pit.digest(region)),
      onResult: (region, result) => {
        if (result.status !== 'same') differ.set(region);
      },
      onRead: (_region, length) => progress.advance(length),
      signal: options.signal,
    });
    progress.done();
    const { fetches } = planFetches(context.pit, g, (region) => differ.has(region));
    progress.phase('restore', differ.count() * plan.regionSize);
    const zeros = Buffer.alloc(plan.regionSize);
    for (const region of differ.regions()) {
      if (!context.pit.isZero(region)) continue;
      await target.handle.write(zeros, 0, regionLength(g, region), region * plan.regionSize);
    }
    const downloaded = await fetchAndWrite(plan, context, pool, target.handle.fd, options, fetches);
    await target.handle.sync();
    progress.done();
    return { ...restoreResult(plan, options.to, target.isBlockDevice ? 'block-device' : 'file', downloaded), regionsReused: g.regionCount - differ.count() };
  } catch (error) {
    throw targetError(error, options.to);
  } finally {
    differ.dispose();
    await pool.close();
    await target.handle.close();
  }
}

function* allRegions(count: number): Generator<number> {
  for (let i = 0; i < count; i++) yield i;
}

/** Standard output: regions in volume order, each verified before it is written. */
async function restoreToStream(plan: RestorePlan, context: PlanContext, options: ExecuteRestoreOptions): Promise<RestoreResult> {
  const out = options.stdout ?? process.stdout;
  const pool = new RegionPool(options.workers);
  const g: Geometry = { volumeSize: plan.volumeSize, regionSize: plan.regionSize, regionCount: plan.regions };
  const window = options.fetchesInFlight ?? 8;
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
  let downloaded = 0;
  const fetchRegion = async (region: number): Promise<Uint8Array> => {
    const length = regionLength(g, region);
    const location = context.pit.location(region);
    if (location === undefined) return new Uint8Array(length);
    const bytes = await context.repo.readPackRange(location.pack, location.offset, length, signal);
    downloaded += length;
    const expected = context.pit.digest(region).slice();
    const result = await pool.verify(bytes, [{ at: 0, length, expected, writes: [] }]);
    const bad = result.mismatches[0];
    if (bad !== undefined) {
      throw new IntegrityError(`region ${region} in ${location.pack}`, Buffer.from(expected).toString('hex'), Buffer.from(bad.digest).toString('hex'));
    }
    return result.bytes;
  };
  const ahead: Array<Promise<Uint8Array>> = [];
  try {
    progress.phase('restore', plan.volumeSize);
    let next = 0;
    let flushed: Promise<void> = Promise.resolve();
    for (let region = 0; region < plan.regions && outputError === undefined; region++) {
      while (next < plan.regions && ahead.length < window) {
        const fetched = fetchRegion(next++);
        // Awaited in order below; one that fails while an earlier one is awaited must not be an unhandled rejection.
        fetched.catch(() => {});
        ahead.push(fetched);
      }
      const bytes = await ahead[0]!;
      ahead.shift();
      throwIfAborted(options.signal);
      if (outputError !== undefined) break;
      let full = false;
      flushed = new Promise<void>((resolve) => {
        full = !out.write(bytes, (error) => {
          if (error != null) onOutputError(error);
          resolve();
        });
      });
      if (full) await once(out, 'drain', { signal });
      progress.advance(bytes.length);
    }
    // Done only when the stream has taken the last bytes.
    await flushed;
    if (outputError !== undefined) throw outputFailure(outputError);
    progress.done();
    return restoreResult(plan, '-', 'stdout', downloaded);
  } catch (error) {
    if (outputError !== undefined) throw outputFailure(outputError);
    throw options.signal?.aborted === true ? new AbortedError('restore cancelled', { cause: error }) : error;
  } finally {
    // A failed stream may still emit 'error' later: keep the listener then.
    if (outputError === undefined) out.off('error', onOutputError);
    // No fetch may reach the pool after it closes.
    await Promise.allSettled(ahead);
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

function restoreResult(plan: RestorePlan, target: string, targetKind: RestoreResult['targetKind'], downloaded: number): RestoreResult {
  return { seq: plan.seq, time: plan.time, target, targetKind, bytesWritten: plan.volumeSize, bytesDownloaded: downloaded, verified: true };
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
