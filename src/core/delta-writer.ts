// What backup and scan share: reading regions of the primary through the RegionPool with a
// bounded read-ahead, and turning changed regions into the next delta (deduplicate, pack,
// upload with a bounded number of packs in flight, then describe the delta).

import { randomBytes } from 'node:crypto';
import { throwIfAborted } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import { type Delta, DIGEST_BYTES, type Geometry, type PitMap, type RegionLocation, ZERO_REGION, regionLength } from '../model/pit-map.js';
import { packKey } from '../repo/keys.js';
import { PackBuilder } from '../repo/pack.js';
import type { Repository } from '../repo/repository.js';
import { type WriterTrust, locationId, mayReuse } from '../repo/trust.js';
import type { ReadResult, RegionPool } from '../volume/region-pool.js';

/** A digest no region has: reading with it as the expectation always yields the bytes. */
export const NEVER_DIGEST = new Uint8Array(DIGEST_BYTES).fill(0xff);
const ZERO_DIGEST = new Uint8Array(DIGEST_BYTES);

export interface ReadRegionsOptions {
  pool: RegionPool;
  fd: number;
  geometry: Geometry;
  regions: Iterable<number>;
  /** The digest each region is expected to have (null: all zeros). */
  expected: (region: number) => Uint8Array | null;
  /** Called once per region, one at a time, in the order of `regions`. */
  onResult: (region: number, result: ReadResult) => Promise<void> | void;
  onRead?: (region: number, length: number) => void;
  readAhead?: number;
  signal?: AbortSignal;
}

/**
 * Reads the regions through the pool with up to readAhead in flight. Results are handed to
 * onResult one at a time in the order of `regions`, whatever order the threads finish in, so a
 * backup packs regions in volume order and later reads of neighbouring regions merge into one
 * ranged GET; a 'changed' result's bytes are released to the pool after onResult returns.
 * Stops at the first failure or when the signal fires, after the reads in flight settle.
 */
export async function readRegions(options: ReadRegionsOptions): Promise<void> {
  const { pool, geometry: g, signal } = options;
  const readAhead = options.readAhead ?? pool.size * 4;
  const reads = new Set<Promise<void>>();
  let failure: unknown;
  let handling: Promise<void> = Promise.resolve();
  // A function, so the checks are made afresh after each await.
  const stopping = (): boolean => failure !== undefined || signal?.aborted === true;
  for (const region of options.regions) {
    if (stopping()) break;
    while (reads.size >= readAhead) await Promise.race(reads);
    if (stopping()) break;
    const length = regionLength(g, region);
    const expected = options.expected(region);
    const read = options.pool.read({ fd: options.fd, offset: region * g.regionSize, length, expected: expected === null ? null : expected.slice() });
    read.catch(() => {}); // awaited in turn below; until then a failure must not count as unhandled
    handling = handling.then(async () => {
      let result: ReadResult;
      try {
        result = await read;
      } catch (error) {
        failure ??= error;
        return;
      }
      try {
        if (failure === undefined) {
          await options.onResult(region, result);
          options.onRead?.(region, length);
        }
      } catch (error) {
        failure ??= error;
      } finally {
        if (result.status === 'changed') pool.release(result.bytes);
      }
    });
    const tracked = handling.finally(() => reads.delete(tracked));
    reads.add(tracked);
  }
  await Promise.all(reads);
  await handling;
  throwIfAborted(signal);
  if (failure !== undefined) throw failure;
}

/** Finds regions whose content the repository already holds, by digest. */
class DedupIndex {
  // Keyed by the digest's first 48 bits; a hit is confirmed against the full digest.
  private readonly byPrefix = new Map<number, number>();

  constructor(
    private readonly pit: PitMap,
    private readonly usable: (location: RegionLocation) => boolean,
  ) {
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
    if (!Buffer.from(this.pit.digest(region)).equals(digest)) return undefined;
    const location = this.pit.location(region);
    return location !== undefined && this.usable(location) ? location : undefined;
  }
}

function prefixOf(digest: Uint8Array): number {
  return Buffer.from(digest.buffer, digest.byteOffset, 6).readUIntLE(0, 6);
}

export interface DeltaWriterOptions {
  signal?: AbortSignal;
  /** Packs being uploaded at once (each up to the repository's pack size in memory). */
  packsInFlight?: number;
  /** What the marks say about stored bytes (readWriterTrust): required, so no writer forgets it. */
  trust: WriterTrust;
}

export { locationId };

/**
 * Builds delta `seq` on top of `pit` (which it updates in place to the new point in time):
 * apply() each region read from the primary, finish() to store the packs, then delta().
 */
export class DeltaWriter {
  readonly changed: DeltaMap;
  bytesStored = 0;
  packCount = 0;
  private pack: PackBuilder | undefined;
  private readonly uploads = new Set<Promise<void>>();
  private readonly spareBuffers: Buffer[] = []; // buffers of stored packs, filled again by later ones
  private readonly dedup: DedupIndex;
  /** Packs this writer stores: what it deduplicates against within its own delta is always usable. */
  private readonly ownPacks = new Set<string>();
  private failure: unknown;

  constructor(
    private readonly repo: Repository,
    readonly pit: PitMap,
    readonly seq: number,
    private readonly options: DeltaWriterOptions,
  ) {
    this.changed = new DeltaMap(pit.regionCount);
    this.dedup = new DedupIndex(pit, (location) => this.ownPacks.has(location.pack) || mayReuse(options.trust, location));
  }

  /** Records what the primary holds in `region` now (callers serialize calls). */
  async apply(region: number, result: ReadResult): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    if (result.status === 'same') return;
    this.changed.set(region);
    if (result.status === 'zero') {
      this.pit.setRegion(region, undefined, ZERO_DIGEST);
      return;
    }
    const location = this.dedup.find(result.digest) ?? (await this.store(result.bytes));
    this.pit.setRegion(region, location, result.digest);
    this.dedup.add(region);
  }

  /** Uploads the last pack and waits for every upload. */
  async finish(): Promise<void> {
    if (this.failure === undefined && this.pack !== undefined && this.options.signal?.aborted !== true) await this.upload(this.pack);
    this.pack = undefined;
    await Promise.all(this.uploads);
    if (this.failure !== undefined) throw this.failure;
  }

  /** The delta's entries: for each changed region in ascending order, where the PIT map now has it. */
  delta(kind: Delta['kind'], start: number, end: number): Delta {
    return buildDelta(this.seq, kind, start, end, this.changed, this.pit, this.bytesStored);
  }

  private async store(bytes: Uint8Array): Promise<RegionLocation> {
    const g = this.repo.geometry;
    if (this.pack !== undefined && !this.pack.hasRoomFor(bytes.length)) {
      await this.upload(this.pack);
      this.pack = undefined;
    }
    if (this.pack === undefined) {
      this.pack = new PackBuilder(packKey(this.seq, randomBytes(4).toString('hex')), Math.max(this.repo.config.packSize, g.regionSize), this.spareBuffers.pop());
      this.ownPacks.add(this.pack.key);
    }
    this.bytesStored += bytes.length;
    return { pack: this.pack.key, offset: this.pack.append(bytes) };
  }

  private async upload(builder: PackBuilder): Promise<void> {
    while (this.uploads.size >= (this.options.packsInFlight ?? 4)) await Promise.race(this.uploads);
    const task = this.repo.putPack(builder.key, builder.bytes(), this.options.signal).then(
      () => void this.spareBuffers.push(builder.backing),
      (error: unknown) => {
        this.failure ??= error;
      },
    );
    const tracked = task.finally(() => this.uploads.delete(tracked));
    this.uploads.add(tracked);
    this.packCount++;
  }
}

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
