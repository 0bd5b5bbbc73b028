// verify: check the secondary side. Every delta and span reads, and every span equals the merge
// of its children; every point in time can be built (or the missing delta that keeps it from
// being built is named); every stored region a point needs is in a pack that exists and is long
// enough; with readData (or a rotating subset of the packs, so that repeated runs cover
// everything) every stored region's bytes match its SHA-256. Damage is reported with the points
// in time it affects and recorded as `damaged` marks, so restore avoids those points and the
// next backup or scan uploads the regions again while the primary still holds them.
//
// Memory follows the chain's metadata one run at a time: each stored region is checked once, in
// the delta that stored it (its pack is named after that delta), not once per point using it.

import { createHash } from 'node:crypto';
import { CdpError, FormatError, UsageError, throwIfAborted } from '../errors.js';
import { type RunPage, mergeRunPages, runEntries } from '../model/pages.js';
import { DIGEST_BYTES, piecesOf, regionLength } from '../model/regions.js';
import { type Block, type ChainIndex, blockKey } from '../repo/chain-index.js';
import { FORMAT_VERSION, sealEnvelope } from '../repo/envelope.js';
import { PACK_PREFIX, seqName, seqOfPackKey } from '../repo/keys.js';
import { type DamagedLocation, MAX_REGIONS_LISTED, type TrustMark, timeKey } from '../repo/records.js';
import { Repository } from '../repo/repository.js';
import type { PitView } from '../repo/pit-view.js';
import { encodePage } from '../repo/run-codec.js';
import type { RunReader } from '../repo/run-reader.js';
import { putMarks, readTrust, unreadableConcerns } from '../repo/trust.js';
import type { ObjectStore } from '../store/types.js';
import { TaskWindow } from '../util/task-window.js';
import { RegionPool } from '../volume/region-pool.js';
import { locationId } from './delta-writer.js';
import { type Progress, silentProgress } from './progress.js';
import { readPruneCandidates } from './prune.js';
import { type RetentionCheck, checkRetention } from './retention.js';
import { type FetchRange, type FetchedRange, RegionFetcher, type WantedRegion, emptyCounts, planRanges, storedRegions } from './region-fetcher.js';

export const VERIFY_PREFIX = 'verifies/';
const VERIFY_KIND = { magic: 'CDPS3VRF', version: FORMAT_VERSION, what: 'verify record' } as const;
/** Run roots read at once. */
const METADATA_CONCURRENCY = 16;

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
  /** Wall-clock ms since the epoch (Object Lock retention is checked against it); tests inject one. */
  clock?: () => number;
}

export interface VerifyProblem {
  /**
   * 'delta', 'span' (unreadable, or not the merge of its children: only slower reads, it
   * affects no point), 'pack' (missing or short), 'region' (bytes do not match), 'marks' (a
   * trust marks object that cannot be read: `affects` are the points it could concern).
   */
  object: 'delta' | 'span' | 'pack' | 'region' | 'marks';
  key: string;
  detail: string;
  /** Points in time that cannot be restored as they were because of it. */
  affects: number[];
  /** For 'pack' and 'region': how many stored regions of that pack object are bad. */
  regions?: number;
  /**
   * Already recorded: every point it affects is marked damaged by an earlier verify (restore
   * passes over them). Known damage is listed, but only new damage makes the command exit 7.
   */
  known?: true;
}

export interface VerifyResult {
  deltas: number;
  spans: number;
  packs: number;
  /** Distinct stored regions (pack, offset) the chain refers to. */
  locations: number;
  /** Stored regions and patches read and checked against their digests. */
  locationsRead: number;
  /** Regions of the newest point stored as a base with patches, composed and checked (readData). */
  compositions: number;
  bytesRead: number;
  /** Which slice of the packs was read, for readDataSubset. */
  subset: { percent: number; slice: number; slices: number } | undefined;
  problems: VerifyProblem[];
  /** Problems not already recorded (`known` unset): what makes the command exit 7. */
  newProblems: number;
  /** Points in time newly marked damaged (sorted). */
  damaged: number[];
  record: string | undefined;
  /**
   * Object Lock: the retention of every object the history needs, read; those at risk (none, or
   * running out within half the lock days) make the command exit 7 too. Undefined without Object Lock.
   */
  retention: RetentionCheck | undefined;
}

/** The slice a pack belongs to for --read-data-subset: from its key's SHA-256, so slices stay put as packs are added. */
export function packSlice(pack: string, slices: number): number {
  return createHash('sha256').update(pack).digest().readUInt32LE(0) % slices;
}

interface BadLocation extends DamagedLocation {
  digest: Uint8Array;
  /** What is wrong, when it is not the bytes against their own digest (a region that does not compose). */
  why?: string;
}

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
  const index = await repo.fullIndex(signal);
  const latest = index.latest;
  progress.phase('chain', 0);

  // 1. Every delta and span root reads (a delta's pages too: they are its map).
  const deltas = index.deltaSeqs();
  const readable = new Map<string, RunReader>();
  const unreadable = new Map<string, { block: Block; error: string }>();
  const readAll = async (blocks: Block[]): Promise<void> => {
    const window = new TaskWindow(METADATA_CONCURRENCY);
    for (const block of blocks) {
      await window.add(async () => {
        try {
          const run = await repo.readRun(block, signal);
          for (const ref of run.pages) await run.page(ref.page, signal);
          readable.set(blockKey(block), run);
        } catch (error) {
          if (!(error instanceof FormatError)) throw error;
          unreadable.set(blockKey(block), { block, error: error.message });
          index.markUnreadable(block);
        }
      });
    }
    await window.drain();
  };
  await readAll(deltas.map((seq) => index.block(0, seq)));
  const spans = index.spans();
  await readAll(spans);

  // 2. Which points cannot be built: a missing or unreadable delta no span stands in for.
  const gaps = new Map<number, { detail: string; affects: number[] }>();
  for (const seq of index.missingDeltas()) gaps.set(seq, { detail: 'missing', affects: [] });
  // A removed point's delta is not reported unless a kept point needs it (it affects one below).
  for (const { block, error } of unreadable.values()) if (block.level === 0) gaps.set(block.last, { detail: error, affects: [] });
  for (const [missing, gap] of [...gaps].sort((a, b) => a[0] - b[0])) {
    for (let p = missing; p <= latest; p++) {
      if (index.forgotten.has(p)) continue;
      const blocking = await index.blockedBy(p, signal);
      if (blocking === undefined) break; // a span stands in for it from here on
      if (blocking === missing) gap.affects.push(p);
      else if (blocking < missing) continue; // an older gap already blocks p
      else break;
    }
    if (index.forgotten.has(missing) && gap.affects.length === 0) continue;
    problems.push({ object: 'delta', key: `deltas/${seqName(missing)}`, detail: gap.detail, affects: gap.affects });
  }

  // 3. Spans: unreadable ones, and ones that are not the merge of their children (derived
  // data: readers fall back to the children, so no point is affected).
  for (const { block, error } of unreadable.values()) {
    if (block.level > 0) problems.push({ object: 'span', key: blockKey(block), detail: error, affects: [] });
  }
  for (const block of spans) {
    const span = readable.get(blockKey(block));
    if (span === undefined) continue;
    const size = repo.fanout ** (block.level - 1);
    const children: RunReader[] = [];
    for (let last = block.first + size - 1; last <= block.last; last += size) {
      const child = readable.get(blockKey(index.block(block.level - 1, last)));
      if (child !== undefined) children.push(child);
    }
    if (children.length !== repo.fanout) continue; // a child is missing: nothing to compare with
    const difference = await spanDifference(repo, span, children, signal);
    if (difference !== undefined) problems.push({ object: 'span', key: blockKey(block), detail: difference, affects: [] });
  }

  // 4. Stored regions: each checked once, in the delta that stored it (the pack's name carries
  // that delta's seq); the others only reference it. Packs must exist and be long enough.
  const packSizes = new Map<string, number>();
  for await (const info of store.list(PACK_PREFIX, { signal })) packSizes.set(info.key, info.size);
  let subset: VerifyResult['subset'];
  let chosen: (pack: string) => boolean = () => options.readData === true;
  if (subsetPercent !== undefined) {
    const slices = Math.ceil(100 / subsetPercent);
    const runs = await countObjects(store, VERIFY_PREFIX, signal);
    const slice = runs % slices;
    chosen = (pack) => packSlice(pack, slices) === slice;
    subset = { percent: subsetPercent, slice, slices };
  }
  const bad = new Map<string, BadLocation>();
  let locations = 0;
  // A location whose storing delta cannot be read is checked where it is first referenced.
  const orphans = new Set<string>();
  const storerReadable = (pack: string): boolean => readable.has(blockKey(index.block(0, seqOfPackKey(pack))));
  // Whether this delta checks a stored piece: the one that stored it does; a piece whose storer
  // cannot be read is checked where it is first referenced.
  const checksHere = (seq: number, id: string, pack: string, seen: Set<string>, orphaned = orphans): boolean => {
    if (seen.has(id)) return false;
    seen.add(id);
    if (seqOfPackKey(pack) === seq) return true;
    if (storerReadable(pack) || orphaned.has(id)) return false;
    orphaned.add(id);
    return true;
  };
  const orphanBases = new Set<string>();
  // Deltas first; then spans, for pieces whose storing delta is gone (forgotten and pruned) or
  // unreadable: those are checked where a span names them.
  async function* storedHere(): AsyncGenerator<WantedRegion> {
    for (const block of [...deltas.map((seq) => index.block(0, seq)), ...spans]) {
      const seq = block.level === 0 ? block.last : -1; // a span stores nothing itself (and no pack is named after -1; repacked ones are after 0)
      const run = readable.get(blockKey(block));
      if (run === undefined) continue;
      const seen = new Set<string>();
      const seenBases = new Set<string>();
      for (const ref of run.pages) {
        const page = (await run.page(ref.page, signal))!;
        for (const { region, digest, stored } of runEntries(page)) {
          if (stored === undefined) continue;
          const length = regionLength(g, region);
          // A region stored whole: its bytes against its digest.
          const whole = stored.patches.length === 0 ? stored.base : undefined;
          // A patched region's base was stored whole by an earlier delta, which checks it; here
          // only that it is there, when that delta cannot be read.
          const base = whole === undefined ? stored.base : undefined;
          const pieces = [
            ...(whole === undefined ? [] : [{ ...whole, patch: false }]),
            ...stored.patches.map((patch) => ({ ...patch, patch: true })),
          ];
          if (base !== undefined && checksHere(seq, locationId(base), base.pack, seenBases, orphanBases)) {
            const size = packSizes.get(base.pack);
            if (size === undefined || base.offset + base.length > size) bad.set(locationId(base), { ...base, problem: 'missing', digest: new Uint8Array(DIGEST_BYTES) });
          }
          for (const piece of pieces) {
            const location = { pack: piece.pack, offset: piece.offset, length: piece.length };
            const id = locationId(location);
            if (!checksHere(seq, id, location.pack, seen)) continue;
            locations++;
            const size = packSizes.get(location.pack);
            // A patch carries its own digest.
            const expected = piece.patch ? new Uint8Array(DIGEST_BYTES) : digest.slice();
            if (size === undefined || location.offset + location.length > size) bad.set(id, { ...location, problem: 'missing', digest: expected });
            else if (chosen(location.pack)) yield { region, pack: location.pack, offset: location.offset, stored: location.length, length, digest: expected, ...(piece.patch ? { selfChecked: true } : {}) };
          }
        }
      }
    }
  }
  const { locationsRead, bytesRead, corrupt } = await readAndCheck(repo, storedHere(), options, progress);
  for (const location of corrupt) bad.set(locationId(location), { ...location, problem: 'corrupt' });
  // 4b. Every piece can be intact and a composition still wrong (a change to the primary that
  // protect did not see is not in any patch): with readData, the newest point's patched regions
  // are composed and checked against their digests. A mismatch is recorded on the region's
  // newest patch, so the points that compose through it are marked and the next backup or scan
  // stores the region whole.
  let compositions = 0;
  let compositionBytes = 0;
  if (options.readData === true && subsetPercent === undefined && latest > 0 && (await index.blockedBy(latest, signal)) === undefined) {
    const checked = await checkCompositions(repo, await repo.view(index, latest, { signal }), bad, options, progress);
    compositions = checked.composed;
    compositionBytes = checked.bytesRead;
  }

  // 5. The points each bad location affects: while some region's PIT entry points at it.
  const affected = await pointsUsing(repo, readable, deltas, index, bad, signal);
  reportPerPack(problems, bad, affected, packSizes);

  // A marks object nobody can read: restore treats every point it could concern as possibly
  // marked. Verify cannot tell what it said; it names it (and marks nothing because of it).
  // (Verify cannot tell what it said; it names it, and marks nothing because of it.)
  for (const u of trust.unreadable) {
    const affects: number[] = [];
    for (let seq = 1; seq <= latest && unreadableConcerns(u, seq); seq++) if (!index.forgotten.has(seq)) affects.push(seq);
    const detail = `cannot be read (${u.error}); restore passes over the points in time it could concern unless --allow-suspect`;
    problems.push({ object: 'marks', key: u.key, detail, affects });
  }

  // Damage an earlier verify recorded: every point it affects is already marked damaged.
  const markedDamaged = (seq: number): boolean => (trust.marks.get(seq) ?? []).some((m) => m.kind === 'damaged');
  for (const problem of problems) {
    if (problem.object !== 'span' && problem.object !== 'marks' && problem.affects.length > 0 && problem.affects.every(markedDamaged)) problem.known = true;
  }

  // Record what is newly damaged, so restore avoids it and backups upload it again.
  const fresh = [...bad.values()].filter((d) => !trust.damaged.has(locationId(d))).map(({ pack, offset, length, problem }) => ({ pack, offset, length, problem }));
  const damagedSeqs = new Set<number>();
  const marks: TrustMark[] = [];
  for (const problem of problems) {
    if (problem.object === 'span' || problem.object === 'marks') continue;
    for (const seq of problem.affects) {
      if (damagedSeqs.has(seq) || (trust.marks.get(seq) ?? []).some((m) => m.kind === 'damaged')) continue;
      damagedSeqs.add(seq);
      marks.push({ seq, kind: 'damaged', reason: `${problem.object} ${problem.key}: ${problem.detail}`, regions: affected.regions.get(problem)?.get(seq) ?? [] });
    }
  }
  // Object Lock: is everything the history needs still retained long enough?
  const policy = repo.config.objectLock;
  const retention =
    policy === undefined
      ? undefined
      : await checkRetention(repo, policy, { clock: options.clock ?? Date.now, candidates: new Set((await readPruneCandidates(repo, signal)).firstSeen.keys()), signal });

  let record: string | undefined;
  const now = Date.now();
  if (options.dryRun !== true) {
    record = timeKey(VERIFY_PREFIX, now);
    if (marks.length > 0 || fresh.length > 0) await putMarks(store, { created: now, record, marks, damaged: fresh }, latest, signal);
    const summary = { time: now, problems: problems.length, damaged: damagedSeqs.size, ...(subset === undefined ? {} : { subset }) };
    await store.put(record, sealEnvelope(VERIFY_KIND, summary), { signal, ifAbsent: true });
  }
  return {
    deltas: deltas.length - [...unreadable.values()].filter((u) => u.block.level === 0).length,
    spans: spans.length,
    packs: packSizes.size,
    locations,
    locationsRead,
    compositions,
    bytesRead: bytesRead + compositionBytes,
    subset,
    problems,
    newProblems: problems.filter((p) => p.known !== true).length,
    damaged: [...damagedSeqs].sort((a, b) => a - b),
    record,
    retention,
  };
}

/** Why a span is not the merge of its children (page by page, compared as stored bytes), or undefined. */
async function spanDifference(repo: Repository, span: RunReader, children: readonly RunReader[], signal?: AbortSignal): Promise<string | undefined> {
  const pages = new Set<number>([...span.pages.map((p) => p.page), ...children.flatMap((c) => c.pages.map((p) => p.page))]);
  for (const page of [...pages].sort((a, b) => a - b)) {
    const parts: RunPage[] = [];
    for (const child of children) {
      const part = await child.page(page, signal);
      if (part !== undefined) parts.push(part);
    }
    const expected = mergeRunPages(page, parts);
    const actual = await span.page(page, signal);
    const same =
      actual !== undefined &&
      Buffer.from(encodePage(actual, repo.config.volumeId, repo.pageRegions)).equals(Buffer.from(encodePage(expected, repo.config.volumeId, repo.pageRegions)));
    if (!same && (actual !== undefined || expected.regions.length > 0)) return `differs from the merge of its children in page ${page}`;
  }
  return undefined;
}

interface Affected {
  /** Per bad location id: the points whose map uses it. */
  points: Map<string, Set<number>>;
  /** Per problem (filled by reportPerPack), per point: some of the regions behind it. */
  regions: Map<VerifyProblem, Map<number, number[]>>;
  /** Per bad location id, per point: regions using it. */
  regionsAt: Map<string, Map<number, number[]>>;
}

/**
 * Folds the chain over the regions whose entry is a bad location: which points (and regions)
 * use each. Only regions that point at a bad location are tracked, so memory follows the damage.
 */
async function pointsUsing(
  repo: Repository,
  readable: ReadonlyMap<string, RunReader>,
  deltas: readonly number[],
  index: ChainIndex,
  bad: ReadonlyMap<string, BadLocation>,
  signal?: AbortSignal,
): Promise<Affected> {
  const affected: Affected = { points: new Map(), regions: new Map(), regionsAt: new Map() };
  if (bad.size === 0) return affected;
  const missing = new Set(index.missingDeltas());
  const open = new Map<number, { id: string; since: number }>();
  const close = (region: number, until: number): void => {
    const span = open.get(region);
    if (span === undefined) return;
    open.delete(region);
    const points = affected.points.get(span.id) ?? affected.points.set(span.id, new Set()).get(span.id)!;
    const at = affected.regionsAt.get(span.id) ?? affected.regionsAt.set(span.id, new Map()).get(span.id)!;
    for (let p = span.since; p <= until; p++) {
      if (missing.has(p) || index.forgotten.has(p)) continue;
      points.add(p);
      const list = at.get(p) ?? at.set(p, []).get(p)!;
      if (list.length < MAX_REGIONS_LISTED) list.push(region);
    }
  };
  for (const seq of deltas) {
    const run = readable.get(blockKey(index.block(0, seq)));
    if (run === undefined) continue;
    for (const ref of run.pages) {
      const page = (await run.page(ref.page, signal))!;
      for (const entry of runEntries(page)) {
        close(entry.region, seq - 1);
        if (entry.stored === undefined) continue;
        // A region composed of pieces needs every one of them.
        const id = piecesOf(entry.stored).map(locationId).find((piece) => bad.has(piece));
        if (id !== undefined) open.set(entry.region, { id, since: seq });
      }
    }
  }
  for (const region of [...open.keys()]) close(region, index.latest);
  void repo;
  return affected;
}

/** One problem per pack object (not per region in it), with every point its bad regions affect. */
function reportPerPack(problems: VerifyProblem[], bad: ReadonlyMap<string, BadLocation>, affected: Affected, packSizes: ReadonlyMap<string, number>): void {
  const groups = new Map<string, BadLocation[]>();
  for (const location of [...bad.values()].sort((a, b) => (a.pack < b.pack ? -1 : a.pack > b.pack ? 1 : a.offset - b.offset))) {
    const key = `${location.problem === 'missing' ? 'pack' : 'region'} ${location.pack}`;
    (groups.get(key) ?? groups.set(key, []).get(key)!).push(location);
  }
  for (const list of groups.values()) {
    const { pack, problem: kind } = list[0]!;
    const points = new Set<number>();
    const regions = new Map<number, number[]>();
    for (const location of list) {
      const id = locationId(location);
      for (const p of affected.points.get(id) ?? []) points.add(p);
      for (const [p, rs] of affected.regionsAt.get(id) ?? []) {
        const into = regions.get(p) ?? regions.set(p, []).get(p)!;
        for (const r of rs) if (into.length < MAX_REGIONS_LISTED) into.push(r);
      }
    }
    for (const rs of regions.values()) rs.sort((a, b) => a - b);
    const size = packSizes.get(pack);
    const detail =
      kind === 'missing'
        ? size === undefined
          ? 'missing'
          : `${size} bytes, but regions end up to byte ${list.reduce((end, l) => Math.max(end, l.offset + l.length), 0)}`
        : list.some((l) => l.why !== undefined)
          ? list.map((l) => l.why ?? `bytes at ${l.offset} do not match their SHA-256`).slice(0, 4).join('; ') + (list.length > 4 ? '; …' : '')
          : `bytes at ${list.slice(0, 8).map((l) => l.offset).join(', ')}${list.length > 8 ? ', …' : ''} do not match their SHA-256`;
    const problem: VerifyProblem = { object: kind === 'missing' ? 'pack' : 'region', key: pack, detail, affects: [...points].sort((a, b) => a - b), regions: list.length };
    problems.push(problem);
    affected.regions.set(problem, regions);
  }
}

async function countObjects(store: ObjectStore, prefix: string, signal?: AbortSignal): Promise<number> {
  let n = 0;
  for await (const _ of store.list(prefix, { signal })) n++;
  return n;
}

/**
 * Composes the regions of `view` stored as a base with patches (the one read path, composed
 * ranges) and checks each against its digest; a region that does not compose while none of its
 * pieces is known bad is recorded in `bad` on its newest patch. Returns how many were composed.
 */
async function checkCompositions(repo: Repository, view: PitView, bad: Map<string, BadLocation>, options: VerifyOptions, progress: Progress): Promise<{ composed: number; bytesRead: number }> {
  const planned = new Map<number, WantedRegion>(); // regions of the ranges in flight
  let composed = 0;
  async function* patched(): AsyncGenerator<WantedRegion> {
    for await (const wanted of storedRegions(view, emptyCounts(), undefined, options.signal)) {
      if (wanted.compose === undefined || piecesOf(wanted.compose).some((piece) => bad.has(locationId(piece)))) continue;
      planned.set(wanted.region, wanted);
      composed++;
      yield wanted;
    }
  }
  const bytesRead = await readReporting(repo, patched(), options, progress, 'compose', ({ range, mismatches, missing }) => {
    const failed = new Set(mismatches.map((m) => m.slice));
    range.slices.forEach((slice, i) => {
      for (const region of slice.regions) {
        const wanted = planned.get(region)!;
        planned.delete(region);
        if (missing === undefined && !failed.has(i)) continue;
        const last = wanted.compose!.patches.at(-1)!;
        bad.set(locationId(last), {
          ...last,
          problem: 'corrupt',
          digest: wanted.digest,
          why: missing === undefined ? `region ${region} does not compose to its SHA-256 from its base and ${wanted.compose!.patches.length} patches` : missing.message,
        });
      }
    });
  });
  return { composed, bytesRead };
}

/**
 * Reads the stored regions (in the order stored: neighbours in a pack merge into one GET) with
 * the one read path, and checks each against its digest.
 */
async function readAndCheck(
  repo: Repository,
  wanted: AsyncIterable<WantedRegion>,
  options: VerifyOptions,
  progress: Progress,
): Promise<{ locationsRead: number; bytesRead: number; corrupt: Array<{ pack: string; offset: number; length: number; digest: Uint8Array }> }> {
  const corrupt: Array<{ pack: string; offset: number; length: number; digest: Uint8Array }> = [];
  const bad = (range: FetchRange, slice: number): void => {
    const s = range.slices[slice]!;
    corrupt.push({ pack: range.pack, offset: range.offset + s.storedAt, length: s.storedLength, digest: s.digest });
  };
  let locationsRead = 0;
  async function* counted(): AsyncGenerator<WantedRegion> {
    for await (const location of wanted) {
      locationsRead++;
      yield location;
    }
  }
  const bytesRead = await readReporting(repo, counted(), options, progress, 'read data', ({ range, mismatches, missing }) => {
    // A short or vanished pack: every region in the range is damaged.
    if (missing !== undefined) range.slices.forEach((_, i) => bad(range, i));
    for (const m of mismatches) bad(range, m.slice);
  });
  return { locationsRead, bytesRead, corrupt };
}

/**
 * Fetches and verifies `wanted` through the one read path, damage reported to `onRange` rather
 * than thrown; returns the bytes read.
 */
async function readReporting(
  repo: Repository,
  wanted: AsyncIterable<WantedRegion>,
  options: VerifyOptions,
  progress: Progress,
  phase: string,
  onRange: (fetched: FetchedRange) => void,
): Promise<number> {
  const pool = new RegionPool(options.workers, repo.identity);
  const fetcher = new RegionFetcher(repo, pool, { fetchesInFlight: options.fetchesInFlight, signal: options.signal });
  progress.phase(phase, 0);
  try {
    await fetcher.run(planRanges(wanted, emptyCounts()), {
      reportDamage: true,
      onRange: (fetched) => {
        onRange(fetched);
        progress.advance(fetched.range.length);
      },
    });
  } catch (error) {
    throw error instanceof CdpError ? error : new CdpError('STORE_PERMANENT', String(error), { cause: error });
  } finally {
    await pool.close();
  }
  progress.done();
  return fetcher.bytesFetched;
}
