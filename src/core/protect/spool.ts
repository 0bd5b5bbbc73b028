// The outage spool of protect (docs/FORMAT.md, "Outage spool"): points in time sealed while the
// store is unreachable wait here as segments on the local disk, one per point, until they ship
// in order. A segment is its regions' bytes (`<n>.bin`) and, written last and atomically, its
// index (`<n>.idx`): after a crash, the intact segments that continue the chain ship first.

import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { FormatError, InvalidArgumentError, StoreError } from '../../errors.js';
import { DIGEST_BYTES, identityHash } from '../../model/regions.js';
import { bitmapBytes } from '../../model/patches.js';
import { FieldReader, openEnvelope, sealEnvelope } from '../../repo/envelope.js';
import type { Repository } from '../../repo/repository.js';
import { writeFileAtomic } from '../../util/durable-file.js';
import { preadFully, pwriteFully } from '../../util/positional-io.js';
import { kernels } from '../../kernels/index.js';

const SPOOL_DATA = '.bin';
const SPOOL_INDEX = '.idx';
const SPOOL_INDEX_KIND = { magic: 'CDPS3SPL', version: 1, what: 'spool index' } as const;

/** A segment's data or index, or the temporary file an index is written to before its rename. */
const SPOOL_FILE = /^(\d{8}\.(bin|idx)|\.tmp-[0-9a-f]+)$/;

/** One point in time sealed during an outage: its regions' bytes in a local file. */
export interface SpoolSegment {
  /** The delta it becomes: segments ship in order and nothing else commits while any wait. */
  expectedSeq: number;
  sealTime: number;
  regions: number[];
  offsets: number[];
  lengths: number[];
  /**
   * Per region: the blocks written since its previous point in time (a block bitmap), or
   * undefined: unknown, it ships whole. Valid only on top of the point it was sealed after; a
   * segment renumbered to follow another chain end forgets them.
   */
  blocks: Array<Uint8Array | undefined>;
  file: string;
  bytes: number;
  /** SHA-256 of the data file. */
  sha256: Uint8Array;
  firstWrite: number | undefined;
}

/** The spool directory of these protect options. */
export function spoolDirOf(options: { spoolDir?: string; drl: string }): string {
  return options.spoolDir ?? `${options.drl}.spool`;
}

/** The segments waiting, in the order they ship, and the room they take. */
export class Spool {
  readonly segments: SpoolSegment[] = [];
  private used = 0;
  private counter = 0;

  constructor(
    readonly dir: string,
    private readonly volumeId: string,
    private readonly limitBytes: number,
    private readonly regionSize: number,
    private readonly log?: (line: string) => void,
  ) {}

  get length(): number {
    return this.segments.length;
  }

  get bytes(): number {
    return this.used;
  }

  /** Takes over segments recovered from a spool a crash left behind. */
  adopt(segments: SpoolSegment[]): void {
    if (segments.length === 0) return;
    this.segments.push(...segments);
    for (const segment of segments) this.used += segment.bytes;
    this.counter = Math.max(...segments.map((segment) => spoolNumber(segment.file)));
  }

  /** Room for a segment of `regions` regions, besides `reservedRegions` promised to another. */
  hasRoom(regions: number, reservedRegions = 0): boolean {
    return this.used + (regions + reservedRegions) * this.regionSize <= this.limitBytes;
  }

  /**
   * A segment number for a point in time that may be written later but ships before every
   * segment numbered after it (recovery orders segments by their numbers).
   */
  reserveNumber(): number {
    return ++this.counter;
  }

  /** The delta the next segment becomes: after the last one waiting, else after `chainEnd`. */
  nextSeq(chainEnd: number): number {
    return (this.segments.at(-1)?.expectedSeq ?? chainEnd) + 1;
  }

  /** Every region of every waiting segment. */
  *regions(): Iterable<number> {
    for (const segment of this.segments) yield* segment.regions;
  }

  /**
   * Writes `regions`, each as `read` yields it, into a segment that becomes delta `expectedSeq`
   * after those already spooled. Undefined when the local disk failed (nothing is left of it).
   */
  async write(
    regions: Iterable<number>,
    read: (region: number) => Promise<Uint8Array>,
    point: { expectedSeq: number; sealTime: number; firstWrite: number | undefined; number?: number },
    blocksOf: (region: number) => Uint8Array | undefined = () => undefined,
  ): Promise<SpoolSegment | undefined> {
    const { number = ++this.counter, ...meta } = point;
    const file = join(this.dir, `${String(number).padStart(8, '0')}${SPOOL_DATA}`);
    const segment: SpoolSegment = { ...meta, regions: [], offsets: [], lengths: [], blocks: [], file, bytes: 0, sha256: new Uint8Array(0) };
    try {
      await mkdir(this.dir, { recursive: true, mode: 0o700 });
      const out = await open(file, 'w', 0o600);
      const digest = createHash('sha256');
      try {
        for (const region of regions) {
          const bytes = await read(region);
          segment.regions.push(region);
          segment.offsets.push(segment.bytes);
          segment.lengths.push(bytes.length);
          segment.blocks.push(blocksOf(region)?.slice());
          await pwriteFully(out.fd, bytes, segment.bytes);
          digest.update(bytes);
          segment.bytes += bytes.length;
        }
        await out.datasync();
      } finally {
        await out.close();
      }
      // The index goes last and whole (temp file, rename, directory sync): a segment with an index
      // is complete, so after a crash it can still be shipped as its own point in time.
      segment.sha256 = digest.digest();
      await writeSpoolIndex(segment, this.volumeId);
      // In number order: a reserved number written late ships before the segments after it.
      const at = this.segments.findIndex((other) => spoolNumber(other.file) > number);
      this.segments.splice(at === -1 ? this.segments.length : at, 0, segment);
      this.used += segment.bytes;
      this.log?.(`store unreachable: kept the point in time of ${new Date(point.sealTime).toISOString()} (${segment.regions.length} regions) in the local spool`);
      return segment;
    } catch (error) {
      // The local disk failed too: fall back to coalescing (the DRL and the primary still hold it all).
      await rm(file, { force: true });
      await rm(spoolIndexPath(file), { force: true });
      this.log?.(`spooling failed, coalescing instead: ${(error as Error).message}`);
      return undefined;
    }
  }

  /**
   * Gives the waiting segments the delta numbers `firstSeq`, `firstSeq` + 1, … (the chain moved
   * on: a shipment that failed landed after all). Each index is rewritten whole, in order, so a
   * crash part-way leaves renumbered segments and then ones recovery drops.
   */
  async renumber(firstSeq: number): Promise<void> {
    for (const [i, segment] of this.segments.entries()) {
      if (segment.expectedSeq === firstSeq + i) continue;
      segment.expectedSeq = firstSeq + i;
      // Its blocks were written on top of another point than the one it follows now.
      segment.blocks = segment.blocks.map(() => undefined);
      await writeSpoolIndex(segment, this.volumeId);
    }
  }

  /** Removes every waiting segment (they cannot ship as their own points in time) and returns them. */
  async dropAll(): Promise<SpoolSegment[]> {
    const dropped = this.segments.splice(0);
    this.used = 0;
    for (const segment of dropped) await removeSegment(segment);
    return dropped;
  }

  /** Removes the first segment (it is committed): its index first, so no index names missing data. */
  async shift(): Promise<void> {
    const segment = this.segments.shift();
    if (segment === undefined) return;
    this.used -= segment.bytes;
    await removeSegment(segment);
  }
}

/** The index first, so no index names missing data. */
async function removeSegment(segment: SpoolSegment): Promise<void> {
  await rm(spoolIndexPath(segment.file), { force: true });
  await rm(segment.file, { force: true });
}

/**
 * The spool deletes the segments it cannot ship, so its directory must hold nothing else: not
 * the DRL, not another volume's spool, not anybody's files. Refused before anything is written.
 */
export async function checkSpoolDir(dir: string, drl: string, volumeId: string): Promise<void> {
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

function spoolIndexPath(dataFile: string): string {
  return dataFile.slice(0, -SPOOL_DATA.length) + SPOOL_INDEX;
}

function spoolNumber(file: string): number {
  return Number.parseInt(basename(file), 10);
}

async function writeSpoolIndex(segment: SpoolSegment, volumeId: string): Promise<void> {
  const body = {
    volumeId,
    expectedSeq: segment.expectedSeq,
    sealTime: segment.sealTime,
    ...(segment.firstWrite === undefined ? {} : { firstWrite: segment.firstWrite }),
    regions: segment.regions,
    offsets: segment.offsets,
    lengths: segment.lengths,
    // An empty bitmap for a region whose blocks are unknown.
    blocks: segment.blocks.map((b) => b ?? new Uint8Array(0)),
    bytes: segment.bytes,
    sha256: segment.sha256,
  };
  await writeFileAtomic(spoolIndexPath(segment.file), sealEnvelope(SPOOL_INDEX_KIND, body), { mode: 0o600 });
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
export async function recoverSpool(repo: Repository, dir: string, latest: number, log?: (line: string) => void): Promise<SpoolSegment[]> {
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
      const sha256 = body.bytes('sha256', 32);
      segment = {
        expectedSeq: body.integer('expectedSeq', 1),
        sealTime: body.integer('sealTime'),
        firstWrite: body.has('firstWrite') ? body.integer('firstWrite') : undefined,
        regions: body.integers('regions', 0, regionCount - 1),
        offsets: body.integers('offsets'),
        lengths: body.integers('lengths'),
        blocks: [],
        file,
        bytes,
        sha256,
      };
      const { regions, offsets, lengths } = segment;
      if (offsets.length !== regions.length || lengths.length !== regions.length || regions.some((_, i) => offsets[i]! + lengths[i]! > bytes)) {
        throw new Error('its index is inconsistent');
      }
      segment.blocks = spooledBlocks(body.raw('blocks'), regions, lengths, repo.config.blockSize);
      if ((await stat(file)).size !== bytes || !(await sha256OfFile(file)).equals(Buffer.from(sha256))) {
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

/**
 * The `blocks` of a spool index: per region a block bitmap of the region's length, or an empty
 * one for unknown (an index without them: every region unknown). Anything else is refused.
 */
function spooledBlocks(field: unknown, regions: number[], lengths: number[], blockSize: number): Array<Uint8Array | undefined> {
  if (field === undefined) return regions.map(() => undefined);
  if (!Array.isArray(field) || field.length !== regions.length) throw new Error('its index lists other blocks than regions');
  return field.map((bitmap: unknown, i) => {
    if (!(bitmap instanceof Uint8Array)) throw new Error('its index lists blocks that are not a bitmap');
    if (bitmap.length === 0) return undefined;
    if (bitmap.length !== bitmapBytes(lengths[i]!, blockSize)) throw new Error(`its index lists ${bitmap.length} bytes of blocks for region ${regions[i]}`);
    return new Uint8Array(bitmap);
  });
}

async function sha256OfFile(path: string): Promise<Buffer> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest();
}

/**
 * A spool segment's regions in order, each with its bytes and their identity (undefined for a
 * region of zeros, which ships as a zero entry).
 */
export async function* spoolRegions(segment: SpoolSegment, identity: Uint8Array | undefined): AsyncGenerator<{ region: number; bytes: Buffer; digest: Buffer | undefined; blocks: Uint8Array | undefined }> {
  const input = await open(segment.file, 'r');
  try {
    for (let i = 0; i < segment.regions.length; i++) {
      const bytes = Buffer.allocUnsafe(segment.lengths[i]!);
      if ((await preadFully(input.fd, bytes, segment.offsets[i]!)) < bytes.length) throw new Error(`${segment.file} is shorter than its index says`);
      const digest = kernels().isZero(bytes) ? undefined : identityHash(identity).update(bytes).digest();
      yield { region: segment.regions[i]!, bytes, digest, blocks: segment.blocks[i] };
    }
  } finally {
    await input.close();
  }
}

/**
 * True when delta `segment.expectedSeq` changed exactly the segment's regions to its bytes. A
 * delta that is missing or unreadable holds nothing of it.
 */
export async function committedAs(repo: Repository, segment: SpoolSegment, signal?: AbortSignal): Promise<boolean> {
  const entries: Array<{ region: number; digest: Uint8Array }> = [];
  try {
    const run = await repo.readRun({ level: 0, first: segment.expectedSeq, last: segment.expectedSeq }, signal);
    for (const ref of run.pages) {
      const page = (await run.page(ref.page, signal))!;
      for (let i = 0; i < page.regions.length; i++) entries.push({ region: page.regions[i]!, digest: page.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES) });
    }
  } catch (error) {
    if ((error instanceof StoreError && error.kind === 'not-found') || error instanceof FormatError) return false;
    throw error;
  }
  if (entries.length !== segment.regions.length || entries.some((entry, i) => entry.region !== segment.regions[i])) return false;
  let i = 0;
  for await (const { digest } of spoolRegions(segment, repo.identity)) {
    if (!(digest ?? Buffer.alloc(DIGEST_BYTES)).equals(entries[i]!.digest)) return false;
    i++;
  }
  return true;
}
