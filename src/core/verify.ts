// verify: check the secondary side. Every object a point in time needs exists with the right
// size; the chain folds and every checkpoint equals the fold; with readData (or a rotating
// subset of the packs, so that repeated runs cover everything) every stored region's bytes match
// its SHA-256. Damage is reported with the points in time it affects and recorded as `damaged`
// marks, so restore avoids those points and the next backup or scan uploads the regions again
// while the primary still holds them.

import { CdpError, FormatError, UsageError, throwIfAborted } from '../errors.js';
import { type Delta, type PitMap, ZERO_REGION, regionLength } from '../model/pit-map.js';
import { sealEnvelope } from '../repo/envelope.js';
import { PACK_PREFIX, seqName } from '../repo/keys.js';
import { type DamagedLocation, MAX_REGIONS_LISTED, type TrustMark, timeKey } from '../repo/records.js';
import { Repository } from '../repo/repository.js';
import { putMarks, readTrust, unreadableConcerns } from '../repo/trust.js';
import type { ObjectStore } from '../store/types.js';
import { RegionPool } from '../volume/region-pool.js';
import { locationId } from './delta-writer.js';
import { type Progress, silentProgress } from './progress.js';

export const VERIFY_PREFIX = 'verifies/';
const VERIFY_KIND = { magic: 'CDPS3VRF', version: 1, what: 'verify record' } as const;

export interface VerifyOptions {
  store: ObjectStore;
  /** Read every stored region and check it against its digest. */
  readData?: boolean;
  /** Read this percentage of the packs, a different slice each run (1–100). */
  readDataSubset?: number;
  /** Report only: record no marks. */
  dryRun?: boolean;
  signal?: AbortSignal;
  progress?: Progress;
  workers?: number;
  /** Ranged GETs in flight. Default 8. */
  fetchesInFlight?: number;
}

export interface VerifyProblem {
  /**
   * 'delta', 'checkpoint', 'pack' (missing or short), 'region' (bytes do not match), 'marks' (a
   * trust marks object that cannot be read: `affects` are the points it could concern).
   */
  object: 'delta' | 'checkpoint' | 'pack' | 'region' | 'marks';
  key: string;
  detail: string;
  /** Points in time that cannot be restored as they were because of it. */
  affects: number[];
  /** For 'pack' and 'region': how many stored regions of that pack object are bad. */
  regions?: number;
}

export interface VerifyResult {
  deltas: number;
  checkpoints: number;
  packs: number;
  /** Distinct stored regions (pack, offset) the chain refers to. */
  locations: number;
  /** Stored regions read and checked against their digests. */
  locationsRead: number;
  bytesRead: number;
  /** Which slice of the packs was read, for readDataSubset. */
  subset: { percent: number; slice: number; slices: number } | undefined;
  problems: VerifyProblem[];
  /** Points in time newly marked damaged (sorted). */
  damaged: number[];
  record: string | undefined;
}

interface Location {
  pack: string;
  offset: number;
  length: number;
  digest: Uint8Array;
  /** (region, first seq, last seq) spans during which some PIT map points here. */
  spans: Array<[number, number, number]>;
}

/** Largest ranged GET when reading data. */
const MAX_RANGE_BYTES = 8 * 1024 * 1024;

export async function verify(options: VerifyOptions): Promise<VerifyResult> {
  const { store, signal } = options;
  const progress = options.progress ?? silentProgress;
  const subsetPercent = options.readDataSubset;
  if (subsetPercent !== undefined && (!Number.isFinite(subsetPercent) || subsetPercent <= 0 || subsetPercent > 100)) {
    throw new UsageError(`--read-data-subset ${subsetPercent} is out of range: give a percentage above 0 and at most 100`);
  }
  throwIfAborted(signal);
  const repo = await Repository.open(store, signal);
  const g = repo.geometry;
  const problems: VerifyProblem[] = [];
  const trust = await readTrust(store, signal);

  // The chain: every delta readable, no gaps. A missing or damaged delta breaks the points from
  // it on, up to the first readable checkpoint after it, which stands in for the lost link (as
  // in restore: docs/FORMAT.md, "Keys"); the fold resumes there.
  const listed = await repo.deltaSeqs(signal);
  const last = listed.at(-1) ?? 0;
  const stored = new Set(listed);
  const range = (from: number, to: number): number[] => Array.from({ length: Math.max(0, to - from + 1) }, (_, i) => from + i);

  // Fold the chain, remembering for every stored location which PIT maps point at it.
  const locations = new Map<string, Location>();
  const current: Array<{ id: string; since: number } | undefined> = new Array(g.regionCount);
  const closeSpan = (region: number, until: number): void => {
    const open = current[region];
    if (open !== undefined) locations.get(open.id)!.spans.push([region, open.since, until]);
    current[region] = undefined;
  };
  const openSpan = (region: number, location: { pack: string; offset: number }, digest: Uint8Array, since: number): void => {
    const id = locationId(location);
    if (!locations.has(id)) locations.set(id, { ...location, length: regionLength(g, region), digest, spans: [] });
    current[region] = { id, since };
  };
  const checkpointList = await repo.checkpointSeqs(signal);
  const checkpointsAt = new Set(checkpointList);
  /** The oldest readable checkpoint at or after `from`; unreadable ones on the way are problems. */
  const resumeFrom = async (from: number): Promise<PitMap | undefined> => {
    for (const c of checkpointList.filter((c) => c >= from)) {
      try {
        return await repo.readCheckpoint(c, signal);
      } catch (error) {
        if (!(error instanceof FormatError)) throw error;
        problems.push({ object: 'checkpoint', key: `checkpoints/${seqName(c)}`, detail: error.message, affects: [] });
        unreadableCheckpoints.add(c);
      }
    }
    return undefined;
  };
  const unreadableCheckpoints = new Set<number>();
  const folded = new Map<number, PitMap>(); // seq → PIT map, for checkpoints only
  let pit: PitMap | undefined;
  let deltasRead = 0;
  let chainEnd = last; // the newest point the fold reached
  const ends = new Map<number, number>(); // seq → end, of the deltas read
  progress.phase('chain', 0);
  for (let seq = 1; seq <= last; seq++) {
    let delta: Delta | undefined;
    let broken = 'missing';
    if (stored.has(seq)) {
      try {
        delta = await repo.readDelta(seq, signal);
      } catch (error) {
        if (!(error instanceof FormatError)) throw error;
        broken = error.message;
      }
    }
    if (delta === undefined) {
      for (let region = 0; region < g.regionCount; region++) closeSpan(region, seq - 1);
      const resume = await resumeFrom(seq);
      // Points up to the resume point cannot be built (the resume point itself only if its delta is bad).
      const until = resume === undefined ? last : resume.seq === seq || !stored.has(resume.seq) ? resume.seq : resume.seq - 1;
      for (const lost of range(seq, until)) {
        if (lost === seq || !stored.has(lost)) {
          problems.push({ object: 'delta', key: `deltas/${seqName(lost)}`, detail: lost === seq ? broken : 'missing', affects: range(lost, until) });
        }
      }
      if (resume === undefined) {
        chainEnd = seq - 1;
        break;
      }
      pit = resume;
      for (let region = 0; region < g.regionCount; region++) {
        const location = pit.location(region);
        if (location !== undefined) openSpan(region, location, pit.digest(region).slice(), pit.seq);
      }
      // Choosing the resume point needs its delta (for its time): check that it reads.
      if (stored.has(pit.seq) && pit.seq !== seq) {
        try {
          const own = await repo.readDelta(pit.seq, signal);
          deltasRead++;
          ends.set(own.seq, own.end);
          own.changed.dispose();
        } catch (error) {
          if (!(error instanceof FormatError)) throw error;
          problems.push({ object: 'delta', key: `deltas/${seqName(pit.seq)}`, detail: error.message, affects: [pit.seq] });
        }
      }
      seq = pit.seq;
      continue;
    }
    deltasRead++;
    ends.set(seq, delta.end);
    let entry = 0;
    for (const region of delta.changed.regions()) {
      closeSpan(region, seq - 1);
      const pack = delta.entryPack[entry]!;
      if (pack !== ZERO_REGION) {
        openSpan(region, { pack: delta.packs[pack]!, offset: delta.entryOffset[entry]! }, delta.digests.slice(entry * 32, entry * 32 + 32), seq);
      }
      entry++;
    }
    pit ??= await repo.loadPit(0, { signal });
    pit.apply(delta);
    delta.changed.dispose();
    if (checkpointsAt.has(seq)) folded.set(seq, pit.clone());
  }
  for (let region = 0; region < g.regionCount; region++) closeSpan(region, chainEnd);

  // A marks object nobody can read: restore treats every point it may concern (up to the newest
  // its writer had seen) as possibly marked. Verify cannot tell what it said; it names it (and
  // marks nothing because of it).
  for (const u of trust.unreadable) {
    const affects = [...ends].filter(([seq, end]) => unreadableConcerns(u, { seq, end })).map(([seq]) => seq);
    const detail = `cannot be read (${u.error}); restore passes over the points in time it could concern unless --allow-suspect`;
    problems.push({ object: 'marks', key: u.key, detail, affects });
  }

  // Checkpoints must equal the fold (a bad one only slows restores: they fall back to deltas).
  for (const seq of checkpointsAt) {
    const expected = folded.get(seq);
    if (expected === undefined || unreadableCheckpoints.has(seq)) continue; // past a broken link: reported above
    try {
      const checkpoint = await repo.readCheckpoint(seq, signal);
      const region = firstDifference(checkpoint, expected);
      if (region !== undefined) {
        problems.push({ object: 'checkpoint', key: `checkpoints/${seqName(seq)}`, detail: `differs from the chain at region ${region}`, affects: [] });
      }
    } catch (error) {
      if (!(error instanceof FormatError)) throw error;
      problems.push({ object: 'checkpoint', key: `checkpoints/${seqName(seq)}`, detail: error.message, affects: [] });
    }
  }

  // Every pack a location needs exists and is long enough.
  const packSizes = new Map<string, number>();
  for await (const info of store.list(PACK_PREFIX, { signal })) packSizes.set(info.key, info.size);
  const damaged: DamagedLocation[] = [];
  const affectsOf = (list: Location[]): number[] => {
    const seqs = new Set<number>();
    for (const location of list) for (const [, from, to] of location.spans) for (let s = from; s <= to; s++) seqs.add(s);
    return [...seqs].sort((a, b) => a - b);
  };
  const badLocations = new Map<VerifyProblem, Location[]>(); // the stored regions behind each pack or region problem
  // One problem per pack object (not per region in it), with every point its bad regions affect.
  const reportPerPack = (object: 'pack' | 'region', bad: Location[], detailOf: (pack: string, list: Location[]) => string): void => {
    const byPack = new Map<string, Location[]>();
    for (const l of [...bad].sort((a, b) => (a.pack < b.pack ? -1 : a.pack > b.pack ? 1 : a.offset - b.offset))) {
      (byPack.get(l.pack) ?? byPack.set(l.pack, []).get(l.pack)!).push(l);
    }
    for (const [pack, list] of byPack) {
      const problem: VerifyProblem = { object, key: pack, detail: detailOf(pack, list), affects: affectsOf(list), regions: list.length };
      problems.push(problem);
      badLocations.set(problem, list);
    }
  };
  const readable: Location[] = [];
  const short: Location[] = [];
  for (const location of locations.values()) {
    const size = packSizes.get(location.pack);
    if (size === undefined || location.offset + location.length > size) {
      short.push(location);
      damaged.push({ pack: location.pack, offset: location.offset, length: location.length, problem: 'missing' });
    } else readable.push(location);
  }
  reportPerPack('pack', short, (pack, list) => {
    const size = packSizes.get(pack);
    return size === undefined ? 'missing' : `${size} bytes, but regions end up to byte ${list.reduce((end, l) => Math.max(end, l.offset + l.length), 0)}`;
  });

  // Region data: all of it, or this run's slice of the packs.
  let subset: VerifyResult['subset'];
  let toRead: Location[] = [];
  if (subsetPercent !== undefined) {
    const slices = Math.ceil(100 / subsetPercent);
    const runs = await countObjects(store, VERIFY_PREFIX, signal);
    const slice = runs % slices;
    const packs = [...new Set(readable.map((l) => l.pack))].sort();
    const chosen = new Set(packs.filter((_, i) => i % slices === slice));
    toRead = readable.filter((l) => chosen.has(l.pack));
    subset = { percent: subsetPercent, slice, slices };
  } else if (options.readData === true) toRead = readable;
  const { locationsRead, bytesRead, corrupt } = await readAndCheck(repo, toRead, options, progress);
  for (const location of corrupt) damaged.push({ pack: location.pack, offset: location.offset, length: location.length, problem: 'corrupt' });
  reportPerPack('region', corrupt, (_pack, list) => {
    const at = list.slice(0, 8).map((l) => l.offset).join(', ') + (list.length > 8 ? ', …' : '');
    return `bytes at ${at} do not match their SHA-256`;
  });

  // Record what is newly damaged, so restore avoids it and backups upload it again.
  const fresh = damaged.filter((d) => !trust.damaged.has(locationId(d)));
  const damagedSeqs = new Set<number>();
  const marks: TrustMark[] = [];
  for (const problem of problems) {
    if (problem.object === 'checkpoint' || problem.object === 'marks') continue;
    for (const seq of problem.affects) {
      if (damagedSeqs.has(seq) || (trust.marks.get(seq) ?? []).some((m) => m.kind === 'damaged')) continue;
      damagedSeqs.add(seq);
      marks.push({ seq, kind: 'damaged', reason: `${problem.object} ${problem.key}: ${problem.detail}`, regions: regionsOf(badLocations.get(problem) ?? [], seq) });
    }
  }
  let record: string | undefined;
  const now = Date.now();
  if (options.dryRun !== true) {
    record = timeKey(VERIFY_PREFIX, now);
    if (marks.length > 0 || fresh.length > 0) await putMarks(store, { created: now, record, marks, damaged: fresh }, last, signal);
    const summary = { time: now, problems: problems.length, damaged: damagedSeqs.size, ...(subset === undefined ? {} : { subset }) };
    await store.put(record, sealEnvelope(VERIFY_KIND, summary), { signal, ifAbsent: true });
  }
  return {
    deltas: deltasRead,
    checkpoints: checkpointsAt.size,
    packs: packSizes.size,
    locations: locations.size,
    locationsRead,
    bytesRead,
    subset,
    problems,
    damaged: [...damagedSeqs].sort((a, b) => a - b),
    record,
  };
}

/** Some of the regions whose PIT map at `seq` points at one of these stored locations. */
function regionsOf(list: Location[], seq: number): number[] {
  const out: number[] = [];
  for (const location of list) {
    for (const [region, from, to] of location.spans) {
      if (from <= seq && seq <= to && out.length < MAX_REGIONS_LISTED) out.push(region);
    }
  }
  return out.sort((a, b) => a - b);
}

async function countObjects(store: ObjectStore, prefix: string, signal?: AbortSignal): Promise<number> {
  let n = 0;
  for await (const _ of store.list(prefix, { signal })) n++;
  return n;
}

function firstDifference(a: PitMap, b: PitMap): number | undefined {
  for (let region = 0; region < a.regionCount; region++) {
    const x = a.location(region);
    const y = b.location(region);
    if (x?.pack !== y?.pack || x?.offset !== y?.offset || !Buffer.from(a.digest(region)).equals(b.digest(region))) return region;
  }
  return undefined;
}

/** Reads the locations' bytes with merged ranged GETs and checks each against its digest. */
async function readAndCheck(
  repo: Repository,
  locations: Location[],
  options: VerifyOptions,
  progress: Progress,
): Promise<{ locationsRead: number; bytesRead: number; corrupt: Location[] }> {
  const corrupt: Location[] = [];
  if (locations.length === 0) return { locationsRead: 0, bytesRead: 0, corrupt };
  const byPack = new Map<string, Location[]>();
  for (const l of locations) (byPack.get(l.pack) ?? byPack.set(l.pack, []).get(l.pack)!).push(l);
  const ranges: Array<{ pack: string; offset: number; length: number; parts: Location[] }> = [];
  for (const [pack, list] of byPack) {
    list.sort((a, b) => a.offset - b.offset);
    let current: (typeof ranges)[number] | undefined;
    for (const l of list) {
      if (current === undefined || current.offset + current.length !== l.offset || current.length + l.length > MAX_RANGE_BYTES) {
        current = { pack, offset: l.offset, length: 0, parts: [] };
        ranges.push(current);
      }
      current.parts.push(l);
      current.length += l.length;
    }
  }
  const pool = new RegionPool(options.workers);
  let bytesRead = 0;
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  progress.phase('read data', locations.reduce((n, l) => n + l.length, 0));
  try {
    for (const range of ranges) {
      if (failure !== undefined) break;
      throwIfAborted(options.signal);
      while (inFlight.size >= (options.fetchesInFlight ?? 8)) await Promise.race(inFlight);
      const task = (async () => {
        let bytes: Uint8Array;
        try {
          bytes = await repo.readPackRange(range.pack, range.offset, range.length, options.signal);
        } catch (error) {
          // A short or vanished pack: every region in the range is damaged.
          if (!(error instanceof FormatError)) throw error;
          corrupt.push(...range.parts);
          return;
        }
        bytesRead += bytes.length;
        const { mismatches } = await pool.verify(
          bytes,
          range.parts.map((l) => ({ at: l.offset - range.offset, length: l.length, expected: l.digest, writes: [] })),
        );
        for (const m of mismatches) corrupt.push(range.parts[m.slice]!);
        progress.advance(bytes.length);
      })().catch((error: unknown) => {
        failure ??= error;
      });
      const tracked = task.finally(() => inFlight.delete(tracked));
      inFlight.add(tracked);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure instanceof CdpError ? failure : new CdpError('STORE_PERMANENT', String(failure), { cause: failure });
    progress.done();
    return { locationsRead: locations.length, bytesRead, corrupt };
  } finally {
    await pool.close();
  }
}
