// Object Lock upkeep (docs/FORMAT.md, "Object Lock"), run by prune:
//
// - Extension. Every object the history needs was put retained for the repository's lock days.
//   Before that runs out, an extension sets every such object's retention to now + lock days and
//   then records it (`retention`). It is due once the recorded retention has less than half the
//   lock days left (before the first, the config's: see retainedFloor), so each object costs one
//   retention request per half lock period, and prune may fail for half a period before anything
//   needed comes near expiry. A record that is gone or does not open makes it due: safe, since
//   setting a retention again costs a request and nothing else. (A forged record in a plain
//   repository could postpone it: verify reads the retention of every object, not the record.)
//   Objects prune found unneeded are left out, so their retention runs out and they can go.
// - Deletion. Nothing tries to delete an object whose retention has not run out: prune asks each
//   candidate's retention first (a HEAD), keeps the locked ones for a later prune, and deletes
//   the others by version, so their bytes go (a delete without a version only hides them).
// - Sweep. In a versioned bucket, what is rewritten or deleted as a matter of course (locks,
//   protect status, prune records, the retention record) leaves older versions and delete
//   markers behind; they are never retained, and the sweep deletes them.

import pLimit from 'p-limit';
import { FormatError, StoreError, throwIfAborted } from '../errors.js';
import { RETENTION_KEY, DAY_MS, type ObjectLockPolicy, UNRETAINED, retainedKey, retentionFrom } from '../repo/retaining-store.js';
import { type RetentionRecord, decodeRetentionRecord, encodeRetentionRecord } from '../repo/records.js';
import type { Repository } from '../repo/repository.js';
import { MAX_DELETE_BATCH, type ObjectStore } from '../store/types.js';

/** Retention requests in flight at once. */
const RETENTION_CONCURRENCY = 16;

/** The last extension's record, or undefined when there is none or it cannot be read. */
export async function readRetentionRecord(repo: Repository, signal?: AbortSignal): Promise<RetentionRecord | undefined> {
  try {
    const record = decodeRetentionRecord(await repo.store.get(RETENTION_KEY, signal === undefined ? {} : { signal }));
    return record.volumeId === repo.config.volumeId ? record : undefined;
  } catch (error) {
    if (error instanceof FormatError || (error instanceof StoreError && error.kind === 'not-found')) return undefined;
    throw error;
  }
}

/**
 * Until when everything the history needs is retained at least: the last extension's, else the
 * repository's creation plus the lock days (every object was put after the config's `created`
 * time, with a retention of the lock days from its put).
 */
export function retainedFloor(repo: Repository, policy: ObjectLockPolicy, record: RetentionRecord | undefined): number {
  return record?.until ?? Date.parse(repo.config.created) + policy.days * DAY_MS;
}

/** From when on an extension is due: half the lock days before the floor (above) runs out. */
export function extensionDueAt(repo: Repository, policy: ObjectLockPolicy, record: RetentionRecord | undefined): number {
  return retainedFloor(repo, policy, record) - (policy.days * DAY_MS) / 2;
}

export interface ExtensionResult {
  /** Whether an extension was due (a dry run: would have run). */
  due: boolean;
  /** Objects whose retention was set (dry run: would be). */
  extended: number;
  /** Until when what the history needs is retained now (from the record when none was due). */
  until: number | undefined;
  /** When the next extension is due. */
  nextDue: number | undefined;
}

/**
 * Extends the retention of every object the history needs when an extension is due (see the
 * top). `unneeded` are prune's candidates: left to run out.
 */
export async function extendRetention(
  repo: Repository,
  policy: ObjectLockPolicy,
  options: { unneeded: ReadonlySet<string>; clock: () => number; dryRun: boolean; signal?: AbortSignal },
): Promise<ExtensionResult> {
  const { signal } = options;
  const store = repo.store;
  const record = await readRetentionRecord(repo, signal);
  const now = options.clock();
  if (now < extensionDueAt(repo, policy, record)) {
    return { due: false, extended: 0, until: retainedFloor(repo, policy, record), nextDue: extensionDueAt(repo, policy, record) };
  }
  const retention = retentionFrom(policy, now);
  const limit = pLimit(RETENTION_CONCURRENCY);
  const jobs: Promise<void>[] = [];
  let extended = 0;
  for await (const info of store.list('', signal === undefined ? {} : { signal })) {
    if (!retainedKey(info.key) || options.unneeded.has(info.key)) continue;
    extended++;
    if (options.dryRun) continue;
    jobs.push(
      limit(async () => {
        throwIfAborted(signal);
        try {
          await store.retain(info.key, retention, signal === undefined ? {} : { signal });
        } catch (error) {
          // Deleted since it was listed (a prune's candidate of an earlier run): nothing to keep.
          if (error instanceof StoreError && error.kind === 'not-found') return;
          throw error;
        }
      }),
    );
    // Bound what waits: a listing of a million objects must not queue a million requests.
    if (jobs.length >= 4 * RETENTION_CONCURRENCY) await Promise.all(jobs.splice(0));
  }
  await Promise.all(jobs);
  if (options.dryRun) return { due: true, extended, until: retainedFloor(repo, policy, record), nextDue: now };
  const written: RetentionRecord = { volumeId: repo.config.volumeId, at: now, until: retention.until, extended };
  await store.put(RETENTION_KEY, encodeRetentionRecord(written), signal === undefined ? {} : { signal });
  return { due: true, extended, until: written.until, nextDue: extensionDueAt(repo, policy, written) };
}

export interface LockedObject {
  key: string;
  bytes: number;
  /** When its retention runs out (ms since the epoch). */
  until: number;
}

/** Objects prune may delete, each with the version to delete (so that its bytes go, not just its name). */
export interface DeletableObject {
  key: string;
  bytes: number;
  versionId: string | undefined;
}

/**
 * Which of `objects` may be deleted now and which are still retained (a HEAD each). Missing ones
 * are already gone and in neither list.
 */
export async function findLocked(
  store: ObjectStore,
  objects: ReadonlyArray<{ key: string; bytes: number }>,
  options: { clock: () => number; signal?: AbortSignal },
): Promise<{ deletable: DeletableObject[]; locked: LockedObject[] }> {
  const { signal } = options;
  const limit = pLimit(RETENTION_CONCURRENCY);
  const heads = await Promise.all(objects.map((o) => limit(() => store.head(o.key, signal === undefined ? {} : { signal }))));
  const now = options.clock();
  const deletable: DeletableObject[] = [];
  const locked: LockedObject[] = [];
  objects.forEach((object, i) => {
    const info = heads[i];
    if (info === undefined) return;
    if (info.retention !== undefined && info.retention.until > now) locked.push({ key: object.key, bytes: object.bytes, until: info.retention.until });
    else deletable.push({ key: object.key, bytes: object.bytes, versionId: info.versionId });
  });
  return { deletable, locked };
}

/** Deletes the objects (each version given, or the current one), MAX_DELETE_BATCH at a time, a few batches at once. */
export async function deleteObjects(store: ObjectStore, objects: ReadonlyArray<{ key: string; versionId?: string | undefined }>, signal?: AbortSignal): Promise<void> {
  const batches = pLimit(4);
  const jobs: Promise<void>[] = [];
  for (let i = 0; i < objects.length; i += MAX_DELETE_BATCH) {
    const batch = objects.slice(i, i + MAX_DELETE_BATCH);
    const versionIds = batch.some((o) => o.versionId !== undefined) ? { versionIds: batch.map((o) => o.versionId) } : {};
    jobs.push(batches(() => store.deleteMany(batch.map((o) => o.key), { ...versionIds, ...(signal === undefined ? {} : { signal }) })));
  }
  await Promise.all(jobs);
}

/**
 * Deletes the older versions and delete markers of what is never retained (see the top); the
 * current versions stay. Returns how many it deleted.
 */
export async function sweepVersions(store: ObjectStore, signal?: AbortSignal): Promise<number> {
  const versions: Array<{ key: string; versionId: string }> = [];
  const markers: Array<{ key: string; versionId: string }> = [];
  const io = signal === undefined ? {} : { signal };
  for (const prefix of [...UNRETAINED.prefixes, ...UNRETAINED.keys]) {
    for await (const v of store.listVersions(prefix, io)) {
      if (v.versionId === undefined || retainedKey(v.key)) continue;
      if (v.deleteMarker) markers.push({ key: v.key, versionId: v.versionId });
      else if (!v.latest) versions.push({ key: v.key, versionId: v.versionId });
    }
  }
  // Older versions first: were the markers deleted first, an older version could come back as current.
  await deleteObjects(store, versions, signal);
  await deleteObjects(store, markers, signal);
  return versions.length + markers.length;
}

/** What status says of an Object Lock repository (from the retention record alone: one GET). */
export interface ObjectLockReport {
  mode: ObjectLockPolicy['mode'];
  days: number;
  /** Until when what the history needs is retained at least (the last extension's, else the config's own). */
  until: string;
  /** The last extension, if any. */
  extended: string | undefined;
  /** From when the next extension is due (prune runs it). */
  nextDue: string;
  /** An extension is due and has not run: what the history needs is retained for less than half the lock days. */
  due: boolean;
}

export async function objectLockReport(repo: Repository, policy: ObjectLockPolicy, now: number, signal?: AbortSignal): Promise<ObjectLockReport> {
  const record = await readRetentionRecord(repo, signal);
  const until = retainedFloor(repo, policy, record);
  const nextDue = extensionDueAt(repo, policy, record);
  return {
    mode: policy.mode,
    days: policy.days,
    until: new Date(until).toISOString(),
    extended: record === undefined ? undefined : new Date(record.at).toISOString(),
    nextDue: new Date(nextDue).toISOString(),
    due: now >= nextDue,
  };
}

export interface RetentionCheck {
  /** Objects the history needs whose retention was read. */
  checked: number;
  /**
   * Needed objects with no retention, a weaker mode than the repository's, or a retention that
   * runs out within half the lock days (the extension is overdue): a writer's credentials could
   * delete them then. `until` is absent when there is none.
   */
  atRisk: Array<{ key: string; until?: number; mode?: ObjectLockPolicy['mode'] }>;
}

/**
 * Reads the retention of every object the history needs (a HEAD each; prune's candidates are
 * left out: their retention is meant to run out).
 */
export async function checkRetention(
  repo: Repository,
  policy: ObjectLockPolicy,
  options: { clock: () => number; candidates: ReadonlySet<string>; signal?: AbortSignal },
): Promise<RetentionCheck> {
  const { signal } = options;
  const io = signal === undefined ? {} : { signal };
  const store = repo.store;
  const limit = pLimit(RETENTION_CONCURRENCY);
  const jobs: Array<Promise<RetentionCheck['atRisk'][number] | undefined>> = [];
  const horizon = options.clock() + (policy.days * DAY_MS) / 2;
  for await (const info of store.list('', io)) {
    if (!retainedKey(info.key) || options.candidates.has(info.key)) continue;
    jobs.push(
      limit(async () => {
        const head = await store.head(info.key, io);
        if (head === undefined) return undefined; // deleted since listed
        const r = head.retention;
        if (r !== undefined && r.until >= horizon && (r.mode === policy.mode || policy.mode === 'governance')) return undefined;
        return r === undefined ? { key: info.key } : { key: info.key, until: r.until, mode: r.mode };
      }),
    );
  }
  const results = await Promise.all(jobs);
  return { checked: jobs.length, atRisk: results.filter((r): r is NonNullable<typeof r> => r !== undefined) };
}
