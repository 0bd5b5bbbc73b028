// backup: read the primary volume, compare each region's digest with the latest PIT map, and
// commit the regions that differ as the next delta of the chain (the first one is the base).
//
// Reading and hashing run on every core (RegionPool); the main thread deduplicates, packs and
// uploads. Order of commit: packs, then the delta, then (every N deltas) a checkpoint, so a
// crash or Ctrl-C at any point leaves only unreferenced packs, never a delta without its data.

import { randomBytes } from 'node:crypto';
import { realpath } from 'node:fs/promises';
import { hostname } from 'node:os';
import { AbortedError, CdpError, throwIfAborted } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import { type Delta, DIGEST_BYTES, type PitMap, type RegionLocation, ZERO_REGION, regionLength } from '../model/pit-map.js';
import { PackBuilder } from '../repo/pack.js';
import { Repository } from '../repo/repository.js';
import { packKey } from '../repo/keys.js';
import type { ObjectStore } from '../store/types.js';
import { RegionIoError, RegionPool } from '../volume/region-pool.js';
import { openVolume } from '../volume/source.js';
import { type ByteRange, regionsOfRanges } from './changed-ranges.js';
import { type Progress, silentProgress } from './progress.js';

export interface BackupOptions {
  store: ObjectStore;
  /** Image file or block device; must be the size the repository was initialized with. */
  source: string;
  /** Only read these byte ranges (from an external change tracker); the rest carries over. */
  changed?: ByteRange[];
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
}

export interface BackupResult {
  seq: number;
  kind: Delta['kind'];
  /** The new point in time (ISO 8601 UTC). */
  time: string;
  regionsScanned: number;
  bytesScanned: number;
  regionsChanged: number;
  /** Region bytes uploaded (after deduplication; zero regions cost nothing). */
  bytesStored: number;
  packs: number;
  checkpoint: boolean;
  /** Why the checkpoint due at this point was not written (the point in time is committed). */
  checkpointError?: string;
}

/** Finds regions whose content the repository already holds, by digest. */
class DedupIndex {
  // Keyed by the digest's first 48 bits; a hit is confirmed against the full digest.
  private readonly byPrefix = new Map<number, number>();

  constructor(private readonly pit: PitMap) {
    for (let region = 0; region < pit.regionCount; region++) {
      if (!pit.isZero(region)) this.add(region);
    }
  }

  add(region: number): void {
    this.byPrefix.set(prefixOf(this.pit.digest(region)), region);
  }

  find(digest: Uint8Array): RegionLocation | undefined {
    const region = this.byPrefix.get(prefixOf(digest));
    if (region === undefined || this.pit.isZero(region)) return undefined;
    return Buffer.from(this.pit.digest(region)).equals(digest) ? this.pit.location(region) : undefined;
  }
}

function prefixOf(digest: Uint8Array): number {
  return Buffer.from(digest.buffer, digest.byteOffset, 6).readUIntLE(0, 6);
}

const ZERO_DIGEST = new Uint8Array(DIGEST_BYTES);

export async function backup(options: BackupOptions): Promise<BackupResult> {
  const { store, signal } = options;
  const progress = options.progress ?? silentProgress;
  const clock = options.clock ?? Date.now;
  throwIfAborted(signal);
  const repo = await Repository.open(store, signal);
  const g = repo.geometry;
  const volume = await openVolume(options.source, 'read');
  const pool = new RegionPool(options.workers);
  const toScan = options.changed === undefined ? undefined : regionsOfRanges(options.changed, g);
  try {
    if (volume.size !== g.volumeSize) {
      throw new CdpError(
        'VOLUME_MISMATCH',
        `${options.source} is ${volume.size} bytes but the repository's volume is ${g.volumeSize} bytes: back up the same disk, or init a new repository`,
      );
    }
    const seqs = await repo.deltaSeqs(signal);
    const previous = seqs.at(-1) ?? 0;
    // The PIT map of the newest point in time; it becomes the new one as regions change.
    const pit = await repo.loadPit(previous, { signal });
    const previousTime = pit.time;
    const seq = previous + 1;
    const dedup = new DedupIndex(pit);
    const changed = new DeltaMap(g.regionCount);
    const start = clock();

    let pack: PackBuilder | undefined;
    let packCount = 0;
    let bytesStored = 0;
    let regionsScanned = 0;
    let bytesScanned = 0;
    let failure: unknown;
    const uploads = new Set<Promise<void>>();
    const uploadLimit = options.packsInFlight ?? 4;

    const spareBuffers: Buffer[] = []; // buffers of stored packs, filled again by later ones
    const upload = async (builder: PackBuilder): Promise<void> => {
      while (uploads.size >= uploadLimit) await Promise.race(uploads);
      const task = repo.putPack(builder.key, builder.bytes(), signal).then(
        () => void spareBuffers.push(builder.backing),
        (error: unknown) => {
          failure ??= error;
        },
      );
      const tracked = task.finally(() => uploads.delete(tracked));
      uploads.add(tracked);
      packCount++;
    };

    const packRegion = async (bytes: Uint8Array): Promise<RegionLocation> => {
      if (pack !== undefined && !pack.hasRoomFor(bytes.length)) {
        await upload(pack);
        pack = undefined;
      }
      pack ??= new PackBuilder(packKey(seq, randomBytes(4).toString('hex')), Math.max(repo.config.packSize, g.regionSize), spareBuffers.pop());
      bytesStored += bytes.length;
      return { pack: pack.key, offset: pack.append(bytes) };
    };

    // Results are applied in arrival order, one at a time (the pack builder is not reentrant).
    let applying: Promise<void> = Promise.resolve();
    const apply = (region: number, result: Awaited<ReturnType<RegionPool['read']>>): Promise<void> => {
      applying = applying.then(async () => {
        if (result.status === 'same') return;
        changed.set(region);
        if (result.status === 'zero') {
          pit.setRegion(region, undefined, ZERO_DIGEST);
          return;
        }
        const location = dedup.find(result.digest) ?? (await packRegion(result.bytes));
        pool.release(result.bytes);
        pit.setRegion(region, location, result.digest);
        dedup.add(region);
      });
      return applying;
    };

    progress.phase('backup', toScan === undefined ? g.volumeSize : toScan.count() * g.regionSize);
    const readAhead = options.readAhead ?? pool.size * 4;
    const reads = new Set<Promise<void>>();
    const regions = toScan === undefined ? allRegions(g.regionCount) : toScan.regions();
    for (const region of regions) {
      if (failure !== undefined || signal?.aborted === true) break;
      while (reads.size >= readAhead) await Promise.race(reads);
      const length = regionLength(g, region);
      const expected = pit.isZero(region) ? null : pit.digest(region).slice();
      const task = pool
        .read({ fd: volume.handle.fd, offset: region * g.regionSize, length, expected })
        .then((result) => apply(region, result))
        .then(() => {
          regionsScanned++;
          bytesScanned += length;
          progress.advance(length);
        })
        .catch((error: unknown) => {
          failure ??= error;
        });
      const tracked = task.finally(() => reads.delete(tracked));
      reads.add(tracked);
    }
    await Promise.all(reads);
    await applying;
    const end = Math.max(clock(), previousTime + 1, start);
    if (failure === undefined && signal?.aborted !== true && pack !== undefined) await upload(pack);
    await Promise.all(uploads);
    progress.done();
    if (signal?.aborted === true) throw new AbortedError('backup cancelled; nothing was committed');
    if (failure !== undefined) throw wrapSourceError(failure, options.source);

    const delta = buildDelta(seq, previous === 0 ? 'base' : 'host', start, end, changed, pit, bytesStored);
    delta.source = { host: hostname(), path: await realpath(options.source) };
    pit.seq = seq;
    pit.time = end;
    const { checkpoint, checkpointError } = await repo.commitDelta(delta, pit, signal);
    const regionsChanged = changed.count();
    changed.dispose();
    return {
      seq,
      kind: delta.kind,
      time: new Date(end).toISOString(),
      regionsScanned,
      bytesScanned,
      regionsChanged,
      bytesStored,
      packs: packCount,
      checkpoint,
      ...(checkpointError === undefined ? {} : { checkpointError }),
    };
  } finally {
    toScan?.dispose();
    await pool.close();
    await volume.handle.close();
  }
}

function* allRegions(count: number): Generator<number> {
  for (let i = 0; i < count; i++) yield i;
}

/** The delta's entries: for each changed region in ascending order, where the PIT map now has it. */
export function buildDelta(seq: number, kind: Delta['kind'], start: number, end: number, changed: DeltaMap, pit: PitMap, storedBytes: number): Delta {
  const count = changed.count();
  const entryPack = new Uint32Array(count);
  const entryOffset = new Uint32Array(count);
  const digests = new Uint8Array(count * DIGEST_BYTES);
  const packs: string[] = [];
  const packIndex = new Map<string, number>();
  let i = 0;
  for (const region of changed.regions()) {
    const location = pit.location(region);
    if (location === undefined) entryPack[i] = ZERO_REGION;
    else {
      let index = packIndex.get(location.pack);
      if (index === undefined) {
        index = packs.length;
        packs.push(location.pack);
        packIndex.set(location.pack, index);
      }
      entryPack[i] = index;
      entryOffset[i] = location.offset;
    }
    digests.set(pit.digest(region), i * DIGEST_BYTES);
    i++;
  }
  return { seq, kind, start, end, changed, packs, entryPack, entryOffset, digests, storedBytes, source: undefined };
}

function wrapSourceError(error: unknown, source: string): unknown {
  if (error instanceof RegionIoError) return new CdpError('SOURCE', `reading ${source} failed: ${error.message}`, { cause: error });
  return error;
}
