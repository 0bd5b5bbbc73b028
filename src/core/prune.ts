// prune: first compacts (compact.ts: the points `forget` removed are folded into the kept points
// after them, as a new generation of the runs that change), then deletes what the chain no
// longer names: older versions of rewritten runs, runs compaction emptied, and packs and page
// packs no run of the chain names (also those left by cancelled, crashed or failed writers). In
// two phases with a grace period, so a reader or writer that is still using an object never
// loses it: the first prune that finds an object unneeded records it as a candidate (`prunes/`);
// a later prune deletes it once it has been a candidate for longer than the grace and is still
// unneeded. Objects named after a point in time newer than the chain's newest (a writer's next
// delta) are never candidates.
//
// What it cannot prove unneeded it keeps: a delta missing from the chain, a run or page that
// cannot be read, or a forget record that cannot be read makes it delete nothing (and say which).

import pLimit from 'p-limit';
import { FormatError, InvalidArgumentError, LockedError, StoreError, throwIfAborted } from '../errors.js';
import { type Block, type ChainIndex, blockKey } from '../repo/chain-index.js';
import { COMPACTION_PREFIX, DELTA_PREFIX, PACK_PREFIX, PAGE_PACK_PREFIX, SPAN_PREFIX, deltaKey, generationName, isPackKey, isPagePackKey, seqOfPackKey } from '../repo/keys.js';
import { type CompactResult, compact, unreadableRun } from './compact.js';
import { type RepackResult, repack } from './repack.js';
import { type WriterLock, acquireWriterLock, listLocks, lockExpires } from '../repo/lock.js';
import { PRUNE_PREFIX, decodePruneRecord, encodePruneRecord, timeKey } from '../repo/records.js';
import { Repository } from '../repo/repository.js';
import { HEAD_MAX_AGE_MS } from './delta-committer.js';
import type { ObjectStore } from '../store/types.js';
import { storeObjectLock } from '../repo/retaining-store.js';
import { type DeletableObject, type ExtensionResult, type LockedObject, deleteObjects, extendRetention, findLocked, sweepVersions } from './retention.js';

export const DEFAULT_PRUNE_GRACE_MS = 24 * 3_600_000;
/** Unused share of pack bytes a prune tolerates before it repacks (--max-unused, as a fraction of the bytes used). */
export const DEFAULT_MAX_UNUSED = 0.05;

export interface PruneOptions {
  store: ObjectStore;
  /** How long an object must have been a candidate before it is deleted (default 24 h; 0 only with no other writer). */
  graceMs?: number;
  /** Repack until the packs hold at most this share more than the chain uses (0.05: 5%; 0 repacks every partly used pack; Infinity never). */
  maxUnused?: number;
  /** Also merge fully used packs smaller than a quarter of the pack size (--repack-small). */
  repackSmall?: boolean;
  /** Report what would be deleted; write and delete nothing. */
  dryRun?: boolean;
  signal?: AbortSignal;
  /** Wall-clock ms since the epoch; tests inject one. */
  clock?: () => number;
  /** Lock TTL when prune takes the writer lock (tests). */
  lockTtlMs?: number;
  /**
   * Runs compaction with no other commit in between, lending the writer lock (protect: its
   * shipping paused). Without it, prune takes the writer lock for the compaction when no writer
   * holds it, and skips the compaction (deleting what is unneeded all the same) when one does.
   */
  exclusive?: <T>(fn: () => Promise<T>) => Promise<T>;
}

export interface PruneResult {
  dryRun: boolean;
  graceMs: number;
  /** The newest point in time. */
  latest: number;
  /** Runs (deltas and spans) whose references were read: those the kept points need. */
  runsRead: number;
  /** Stored runs that are not the chain's (older versions of compacted runs, emptied ones): deleted, or waiting, with the packs only they name. */
  runsUnneeded: number;
  /** Packs and page packs listed. */
  objects: number;
  referenced: number;
  /** Unreferenced objects newer than the newest point (a writer's next delta may need them): kept. */
  inFlight: number;
  /** Unreferenced and deleted now (dry run: would be). */
  deleted: { key: string; bytes: number }[];
  /** Unreferenced, recorded, waiting for their grace to pass. */
  waiting: { key: string; bytes: number; since: number; deletableAt: number }[];
  /** Bytes deleted (dry run: would be). */
  bytesDeleted: number;
  /** What compaction did first (dry run: would do); undefined when it was skipped. */
  compaction: CompactResult | undefined;
  /** What the repack did after it (dry run: would do); undefined when it was skipped. */
  repack: RepackResult | undefined;
  /** Why compaction was skipped. */
  compactionSkipped: string | undefined;
  /** Object Lock: unneeded and past their grace, but still retained: a later prune deletes them. */
  locked: LockedObject[];
  /** Object Lock: the retention extension (undefined without Object Lock). */
  retention: ExtensionResult | undefined;
  /** Object Lock: older versions and delete markers of unretained objects deleted (docs/FORMAT.md, "Object Lock"). */
  versionsSwept: number;
  /** Why the sweep was refused (e.g. a bucket rule retains those versions too); the rest of prune is done. */
  sweepRefused: string | undefined;
}

function checkOptions(options: PruneOptions): number {
  const grace = options.graceMs ?? DEFAULT_PRUNE_GRACE_MS;
  if (!Number.isFinite(grace) || grace < 0) throw new InvalidArgumentError(`--grace must be a duration of 0s or more, not ${String(grace)} ms`);
  const maxUnused = options.maxUnused ?? DEFAULT_MAX_UNUSED;
  if (!(maxUnused === Infinity || (Number.isFinite(maxUnused) && maxUnused >= 0 && maxUnused <= 1))) {
    throw new InvalidArgumentError(`--max-unused must be a percentage from 0% to 100% (or unlimited), not ${String(maxUnused * 100)}%`);
  }
  return grace;
}

export async function prune(options: PruneOptions): Promise<PruneResult> {
  const graceMs = checkOptions(options);
  const { store, signal } = options;
  const clock = options.clock ?? Date.now;
  const dryRun = options.dryRun === true;
  const repo = await Repository.open(store, signal);

  // Compaction rewrites runs, so no writer may commit meanwhile: it runs under the writer lock
  // (protect passes `exclusive`, which pauses its shipping and lends its lock). A grace shorter
  // than a live writer's head refresh (HEAD_MAX_AGE_MS; 0s deletes at once) is only safe with no
  // other writer either: refuse it while one holds the lock, and hold the lock ourselves.
  let lock: WriterLock | undefined;
  let compaction: CompactResult | undefined;
  let repacked: RepackResult | undefined;
  let compactionSkipped: string | undefined;
  const maxUnused = options.maxUnused ?? DEFAULT_MAX_UNUSED;
  // Compaction, then the repack on the chain it left (each commits a generation of its own).
  // A dry run can only say what a repack would do when the compaction would change nothing.
  const compactUnder = async (): Promise<CompactResult> => {
    const result = await compact(repo, await readChain(repo, signal), { signal, clock, dryRun });
    if (maxUnused === Infinity || (dryRun && result.rewritten + result.emptied > 0)) return result;
    repacked = await repack(repo, await readChain(repo, signal), { maxUnused, repackSmall: options.repackSmall, signal, clock, dryRun });
    return result;
  };
  try {
    if (options.exclusive !== undefined) {
      compaction = dryRun ? await compactUnder() : await options.exclusive(() => compactUnder());
    } else {
      const now = clock();
      const live = (await listLocks(store, { signal })).filter((e) => e.lock === undefined || lockExpires(e.lock) > now);
      if (live.length > 0) {
        const holder = live[0]!.lock;
        const who = holder === undefined ? live[0]!.key : `${holder.command} (pid ${holder.pid} on ${holder.host})`;
        if (graceMs < HEAD_MAX_AGE_MS && !dryRun) {
          throw new LockedError(`a --grace under 1h (0s deletes at once) is only safe with no other writer, but ${who} holds the repository lock: use --grace 1h or more, or wait for it to finish`);
        }
        compactionSkipped = `${who} holds the writer lock (protect --prune-every compacts with its shipping paused)`;
      } else {
        if (!dryRun) lock = await acquireWriterLock(store, { command: 'prune', ttlMs: options.lockTtlMs, signal });
        compaction = await compactUnder();
        lock?.check();
      }
    }
    const deletion = await deleteUnneeded(repo, await readChain(repo, signal), { graceMs, dryRun, clock, signal });
    lock?.check();
    return { ...deletion, graceMs, dryRun, compaction, repack: repacked, compactionSkipped };
  } finally {
    await lock?.release();
  }
}

/**
 * The whole chain, listed, with what makes prune (and compaction) stop: a missing delta of a
 * kept point (what only it named cannot be told from leftovers) or an unreadable forget record
 * (which points are kept is unknown).
 */
async function readChain(repo: Repository, signal?: AbortSignal): Promise<ChainIndex> {
  const index = await repo.fullIndex(signal);
  const missing = index.missingDeltas();
  if (missing.length > 0) {
    throw new FormatError(
      'FORMAT_CORRUPT',
      'prune',
      `deleted nothing: ${deltaKey(missing[0]!)} is missing${missing.length > 1 ? ` (and ${missing.length - 1} more)` : ''}, and the packs only it named cannot be told from leftovers (see cdp-s3 verify)`,
    );
  }
  if (index.unreadableForgets.length > 0) {
    const u = index.unreadableForgets[0]!;
    throw new FormatError('FORMAT_CORRUPT', 'prune', `deleted nothing: forget record ${u.key} cannot be read (${u.error}), so which points are kept is unknown`);
  }
  return index;
}

/** Earlier prunes' candidates, with when each was first found unreferenced, and the records that name them. */
export async function readPruneCandidates(repo: Repository, signal?: AbortSignal): Promise<{ firstSeen: Map<string, number>; records: string[] }> {
  const store = repo.store;
  const firstSeen = new Map<string, number>();
  const records: string[] = [];
  for await (const info of store.list(PRUNE_PREFIX, { signal })) {
    records.push(info.key);
    let record;
    try {
      record = decodePruneRecord(await store.get(info.key, { signal }), info.key);
    } catch (error) {
      if (error instanceof FormatError) continue; // unreadable: its candidates start their grace again
      throw error;
    }
    if (record.volumeId !== repo.config.volumeId) continue;
    for (const c of record.candidates) firstSeen.set(c.key, Math.min(firstSeen.get(c.key) ?? Infinity, c.since));
  }
  return { firstSeen, records };
}

async function deleteUnneeded(
  repo: Repository,
  index: ChainIndex,
  options: { graceMs: number; dryRun: boolean; clock: () => number; signal?: AbortSignal },
): Promise<Omit<PruneResult, 'graceMs' | 'dryRun' | 'compaction' | 'repack' | 'compactionSkipped'>> {
  const { graceMs, dryRun, signal } = options;
  const store = repo.store;
  const objectLock = storeObjectLock(store);
  const latest = index.latest;
  // Every run of the chain stays: the kept points' covers, and the runs of points forgotten since
  // the last compaction (the next one folds them). The others are older versions of rewritten
  // runs, runs compaction emptied, and runs of a compaction that never committed.
  const blocks: Block[] = [...index.deltaSeqs().map((seq) => index.block(0, seq)), ...index.spans()];
  const unneeded = index.supersededVersions();

  // What every run that stays names: page packs (pages, summary blocks) and packs (regions, bases, patches).
  const referenced = new Set<string>();
  const limit = pLimit(16);
  const readPages = new Set<string>();
  await Promise.all(
    blocks.map((block) =>
      limit(async () => {
        throwIfAborted(signal);
        try {
          const run = await repo.readRun(block, signal);
          for (const blob of run.root.summaryBlobs) referenced.add(blob.pack);
          for (const ref of run.pages) {
            if (ref.ref !== undefined) {
              referenced.add(ref.ref.pack);
              // A span shares its children's unchanged pages: read each stored page once.
              const id = `${ref.ref.pack}@${ref.ref.offset}`;
              if (readPages.has(id)) continue;
              readPages.add(id);
            }
            const page = await run.page(ref.page, signal);
            for (const pack of page!.packs) referenced.add(pack);
          }
        } catch (error) {
          throw unreadableRun(block, error);
        }
      }),
    ),
  );

  const { firstSeen, records } = await readPruneCandidates(repo, signal);

  const now = options.clock();
  let objects = 0;
  let inFlight = 0;
  let deleted: DeletableObject[] = [];
  const waiting: PruneResult['waiting'] = [];
  const consider = (key: string, bytes: number): void => {
    const since = graceMs === 0 ? now : (firstSeen.get(key) ?? now);
    if (now - since >= graceMs) deleted.push({ key, bytes, versionId: undefined });
    else waiting.push({ key, bytes, since, deletableAt: since + graceMs });
  };
  // Runs first: deleted before the packs they name, so a crash in between leaves no run naming a
  // missing pack. Compaction records older than the newest go with the runs they committed.
  const runSizes = new Map<string, number>();
  if (unneeded.length > 0) for (const prefix of [DELTA_PREFIX, SPAN_PREFIX]) for await (const info of store.list(prefix, { signal })) runSizes.set(info.key, info.size);
  for (const block of unneeded) consider(blockKey(block), runSizes.get(blockKey(block)) ?? 0);
  for (const key of index.compactionKeys) if (key !== `${COMPACTION_PREFIX}${generationName(index.generation)}`) consider(key, 0);
  let runsDeleted = deleted.length;
  for (const prefix of [PACK_PREFIX, PAGE_PACK_PREFIX]) {
    for await (const info of store.list(prefix, { signal })) {
      objects++;
      // Only objects of the writers' own naming; anything else is not ours to delete.
      if (!(isPackKey(info.key) || isPagePackKey(info.key)) || referenced.has(info.key)) continue;
      if (seqOfPackKey(info.key) > latest) {
        inFlight++;
        continue;
      }
      consider(info.key, info.size);
    }
  }

  // Object Lock: what is still retained is not deleted (not even tried); it waits, past its grace.
  let locked: LockedObject[] = [];
  if (objectLock !== undefined) {
    const runs = await findLocked(store, deleted.slice(0, runsDeleted), { clock: options.clock, signal });
    const packs = await findLocked(store, deleted.slice(runsDeleted), { clock: options.clock, signal });
    locked = [...runs.locked, ...packs.locked];
    deleted = [...runs.deletable, ...packs.deletable];
    runsDeleted = runs.deletable.length;
  }

  if (!dryRun) {
    // Record what waits before deleting anything, so a crash at any step keeps every grace running.
    const recordKey = timeKey(PRUNE_PREFIX, now);
    const candidates = [...waiting.map((w) => ({ key: w.key, since: w.since })), ...locked.map((l) => ({ key: l.key, since: firstSeen.get(l.key) ?? now }))];
    if (candidates.length > 0) {
      await store.put(recordKey, encodePruneRecord({ volumeId: repo.config.volumeId, created: now, latest, candidates }), { ifAbsent: true, signal });
    }
    // In batches (S3 DeleteObjects), then the older records, superseded by the one just written.
    await deleteObjects(store, deleted.slice(0, runsDeleted), signal);
    await deleteObjects(store, deleted.slice(runsDeleted), signal);
    await deleteObjects(store, records.map((key) => ({ key })), signal);
  }
  let retention: ExtensionResult | undefined;
  let versionsSwept = 0;
  let sweepRefused: string | undefined;
  if (objectLock !== undefined) {
    const unneeded = new Set([...deleted, ...waiting, ...locked].map((o) => o.key));
    retention = await extendRetention(repo, objectLock, { unneeded, clock: options.clock, dryRun, signal });
    if (!dryRun) {
      try {
        versionsSwept = await sweepVersions(store, signal);
      } catch (error) {
        // Versions someone else retained (a default retention added to the bucket) cannot go: keep going.
        if (!(error instanceof StoreError && error.kind === 'auth')) throw error;
        sweepRefused = error.message;
      }
    }
  }
  return {
    locked,
    retention,
    versionsSwept,
    sweepRefused,
    latest,
    runsRead: blocks.length,
    runsUnneeded: unneeded.length,
    objects,
    referenced: referenced.size,
    inFlight,
    deleted: deleted.map(({ key, bytes }) => ({ key, bytes })),
    waiting,
    bytesDeleted: deleted.reduce((sum, d) => sum + d.bytes, 0),
  };
}
