// Repository locks: one writer at a time (backup, scan, protect, prune). Readers (log, restore)
// take no lock.
//
// Every writer puts its own object `locks/<id>` (random id) and keeps it alive by re-putting it
// with a new `refreshed` time every ttl/3; a lock whose `refreshed + ttlMs` has passed is
// expired and ignored, so the lock of a killed process frees itself. Nothing here needs a
// conditional write (some S3-compatible servers ignore them): ids are random, so writers never
// put the same key, and races are settled by listing after putting.
//
// Taking the lock:
//   1. List locks/: any other live (unexpired) or unreadable lock → LOCKED, naming it.
//   2. Put our lock, state "acquiring", `since` = when we started.
//   3. List again. Any other live lock that is "held", or that sorts before ours by (since, id),
//      or that cannot be read → remove ours, LOCKED. Others "acquiring" that sort after ours are
//      racing us: they will see ours and back off (or, if they saw nothing, become "held", and
//      then we back off); list again until they do, up to raceWaitMs.
//   4. No other live lock: re-put ours as "held". We hold the lock.
//
// Why at most one writer wins: a writer wins only on a list, made after its own put, that shows
// no other live lock. If A and B both won, A's winning list came before B's put (else it would
// show B, whose object lives until B backs off or releases) and B's winning list before A's
// put; but each put precedes its writer's list, so A's put < A's list < B's put < B's list <
// A's put, a contradiction. (Sorting alone does not suffice: a writer whose put is slow can
// sort before a writer that already won without seeing it; the "held" state makes it back off.)
// Why two racing writers do not both lose: only the one sorting later backs off, the other
// waits for it. This relies on LIST showing every completed PUT (S3 and local directories do).
//
// While held, a timer refreshes the lock; a refresh first checks (HEAD) that our object still
// exists, since `--force-unlock` in another process may have removed it, and never puts it
// back then. check() throws if the lock was lost that way, or went unrefreshed for a whole TTL
// (another writer may have taken over): writers call it just before they commit.
// (A removal that lands between a refresh's HEAD and its PUT is undone by that PUT: without
// conditional writes it cannot be detected, one more reason --force-unlock is only for when no
// writer runs.)

import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { FormatError, InvalidArgumentError, type LockHolder, LockedError, StoreError, throwIfAborted } from '../errors.js';
import type { ObjectStore } from '../store/types.js';
import { type Timer, realTimer } from '../util/timer.js';
import { type EnvelopeKind, FORMAT_VERSION, FieldReader, openEnvelope, sealEnvelope } from './envelope.js';
import { LOCK_PREFIX } from './keys.js';

/** A lock expires this long after its last refresh. */
export const DEFAULT_LOCK_TTL_MS = 5 * 60_000;
/** How long a writer waits for a racing writer's "acquiring" lock to resolve. */
const DEFAULT_RACE_WAIT_MS = 10_000;
const RACE_POLL_MS = 20;
const ID_PATTERN = /^[0-9a-f]{32}$/;

export type LockState = 'acquiring' | 'held';

/** The body of a `locks/<id>` object. Times are milliseconds since the epoch. */
export interface LockInfo {
  id: string;
  host: string;
  pid: number;
  command: string;
  /** When the writer started taking the lock; with `id`, orders racing writers. */
  since: number;
  /** The last refresh; the lock expires at refreshed + ttlMs. */
  refreshed: number;
  ttlMs: number;
  state: LockState;
}

/** One object under locks/: its decoded lock, or why it cannot be read. */
export interface LockEntry {
  key: string;
  lock?: LockInfo;
  /** Set when the object is not a readable lock (corrupt, truncated, unknown version, bad key). */
  error?: string;
}

export interface AcquireLockOptions {
  /** What the holder is doing, shown to other writers: 'backup', 'scan', … */
  command: string;
  /** Default 5 minutes. */
  ttlMs?: number;
  /** Default ttlMs / 3. */
  refreshMs?: number;
  /** How long to wait for racing writers to settle before giving up with LOCKED. Default 10 s. */
  raceWaitMs?: number;
  /** Stops taking the lock (not holding it). */
  signal?: AbortSignal;
  /** Wall-clock milliseconds since the epoch; tests may shift it. */
  clock?: () => number;
  /** Schedules the refreshes; tests inject one they advance by hand. Default: real timers. */
  timer?: Timer;
}

export interface WriterLock {
  readonly id: string;
  /** `locks/<id>` */
  readonly key: string;
  /** Stops refreshing and removes the lock object. Throws if the lock had been lost meanwhile. */
  release(): Promise<void>;
  /** Throws LockedError if the lock was lost (removed by another process, or expired unrefreshed). */
  check(): void;
}

const lockKind = (key: string): EnvelopeKind => ({ magic: 'CDPS3LCK', version: FORMAT_VERSION, what: `lock ${key}` });

export function lockKey(id: string): string {
  return `${LOCK_PREFIX}${id}`;
}

export function encodeLock(lock: LockInfo): Uint8Array {
  return sealEnvelope(lockKind(lockKey(lock.id)), { ...lock });
}

export function decodeLock(key: string, bytes: Uint8Array): LockInfo {
  const kind = lockKind(key);
  const r = new FieldReader(kind.what, openEnvelope(kind, bytes));
  const id = r.string('id');
  if (lockKey(id) !== key) throw new FormatError('FORMAT_CORRUPT', kind.what, `field "id" is ${JSON.stringify(id)}, which does not match the key`);
  return {
    id,
    host: r.string('host'),
    pid: r.integer('pid'),
    command: r.string('command'),
    since: r.integer('since'),
    refreshed: r.integer('refreshed'),
    ttlMs: r.integer('ttlMs', 1),
    state: r.oneOf('state', ['acquiring', 'held'] as const),
  };
}

/** Every object under locks/, read and decoded; objects removed while listing are left out. */
export async function listLocks(store: ObjectStore, options: { signal?: AbortSignal } = {}): Promise<LockEntry[]> {
  const keys: string[] = [];
  for await (const info of store.list(LOCK_PREFIX, options)) keys.push(info.key);
  const entries = await Promise.all(
    keys.map(async (key): Promise<LockEntry | undefined> => {
      if (!ID_PATTERN.test(key.slice(LOCK_PREFIX.length))) return { key, error: `lock ${key}: not a lock name (locks/ followed by 32 hex digits)` };
      let bytes: Uint8Array;
      try {
        bytes = await store.get(key, options);
      } catch (error) {
        if (error instanceof StoreError && error.kind === 'not-found') return undefined; // released meanwhile
        // A sealed lock that does not open (damaged, or not sealed under this repository's key) is unreadable.
        if (error instanceof FormatError) return { key, error: error.message };
        throw error;
      }
      try {
        return { key, lock: decodeLock(key, bytes) };
      } catch (error) {
        if (error instanceof FormatError) return { key, error: error.message };
        throw error;
      }
    }),
  );
  return entries.filter((entry): entry is LockEntry => entry !== undefined);
}

/**
 * Removes every object under locks/ (live or not) and returns what was there. Only for when no
 * other cdp-s3 process is writing: a writer whose lock is removed stops before its next commit,
 * but one about to commit may not notice in time.
 */
export async function forceUnlock(store: ObjectStore, options: { signal?: AbortSignal } = {}): Promise<LockEntry[]> {
  const entries = await listLocks(store, options);
  for (const entry of entries) await store.delete(entry.key, options);
  return entries;
}

export function lockExpires(lock: LockInfo): number {
  return lock.refreshed + lock.ttlMs;
}

/**
 * Unexpired, and not held by a process of this host that no longer exists (a writer killed
 * here and restarted here need not wait for its old lock to expire).
 */
function isLive(lock: LockInfo, now: number): boolean {
  return lockExpires(lock) > now && !deadHereAndNow(lock);
}

function deadHereAndNow(lock: LockInfo): boolean {
  if (lock.host !== hostname() || lock.pid === process.pid) return false;
  try {
    process.kill(lock.pid, 0);
    return false;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

function sortsBefore(a: LockInfo, b: LockInfo): boolean {
  return a.since < b.since || (a.since === b.since && a.id < b.id);
}

const iso = (ms: number): string => new Date(ms).toISOString();

function holderOf(entry: LockEntry): LockHolder {
  const lock = entry.lock;
  if (lock === undefined) return { key: entry.key };
  return { key: entry.key, host: lock.host, pid: lock.pid, command: lock.command, since: lock.since, expires: lockExpires(lock) };
}

/** The error for a writer blocked by `entry`. */
export function lockedBy(store: ObjectStore, entry: LockEntry): LockedError {
  const lock = entry.lock;
  if (lock === undefined) {
    return new LockedError(
      `repository ${store.location} is locked by an unreadable lock object (${entry.error ?? entry.key}): ` +
        'if no other cdp-s3 process is writing, run with --force-unlock to remove it',
      holderOf(entry),
    );
  }
  return new LockedError(
    `repository ${store.location} is locked by cdp-s3 ${lock.command} (pid ${lock.pid} on host ${lock.host}) since ${iso(lock.since)}; ` +
      `the lock expires at ${iso(lockExpires(lock))} unless that process refreshes it: ` +
      'if that process is gone, wait for the lock to expire or run with --force-unlock',
    holderOf(entry),
  );
}

/** Takes the repository's writer lock, or throws LockedError naming the writer that holds it. */
export async function acquireWriterLock(store: ObjectStore, options: AcquireLockOptions): Promise<WriterLock> {
  const clock = options.clock ?? Date.now;
  const ttlMs = options.ttlMs ?? DEFAULT_LOCK_TTL_MS;
  if (!Number.isSafeInteger(ttlMs) || ttlMs < 1) throw new InvalidArgumentError(`lock TTL must be a positive integer of milliseconds, got ${ttlMs}`);
  const refreshMs = options.refreshMs ?? Math.max(1, Math.floor(ttlMs / 3));
  const raceWaitMs = options.raceWaitMs ?? DEFAULT_RACE_WAIT_MS;
  const { signal } = options;
  const io = signal === undefined ? {} : { signal };
  throwIfAborted(signal);

  const since = clock();
  // 1. Fail fast when another writer holds the lock.
  for (const entry of await listLocks(store, io)) {
    if (entry.lock === undefined || isLive(entry.lock, clock())) throw lockedBy(store, entry);
  }

  // 2. Announce ourselves.
  const info: LockInfo = {
    id: randomBytes(16).toString('hex'),
    host: hostname(),
    pid: process.pid,
    command: options.command,
    since,
    refreshed: since,
    ttlMs,
    state: 'acquiring',
  };
  const lock = new HeldLock(store, info, clock, options.timer ?? realTimer, refreshMs);
  try {
    await lock.announce(io);
    // 3. Settle races with writers that announced themselves at the same time.
    const deadline = performance.now() + raceWaitMs;
    let expired: LockEntry[] = [];
    for (;;) {
      const entries = await listLocks(store, io);
      const now = clock();
      if (!entries.some((entry) => entry.key === lock.key)) throw lock.lostError('was removed by another process while it was being taken');
      let racing: LockEntry | undefined;
      expired = [];
      for (const entry of entries) {
        if (entry.key === lock.key) continue;
        const other = entry.lock;
        if (other === undefined) throw lockedBy(store, entry);
        if (!isLive(other, now)) expired.push(entry);
        else if (other.state === 'held' || sortsBefore(other, info)) throw lockedBy(store, entry);
        else racing ??= entry;
      }
      if (racing === undefined) break;
      if (performance.now() >= deadline) throw lockedBy(store, racing);
      try {
        await sleep(RACE_POLL_MS, undefined, io);
      } catch (error) {
        throwIfAborted(signal);
        throw error;
      }
    }
    // 4. Ours.
    lock.check();
    await lock.markHeld();
    // Expired locks of writers that are gone: tidy up (a writer that is still alive finds its lock
    // missing at its next refresh and stops before committing).
    for (const entry of expired) await store.delete(entry.key).catch(() => undefined);
    return lock;
  } catch (error) {
    await lock.abandon();
    throw error;
  }
}

class HeldLock implements WriterLock {
  readonly id: string;
  readonly key: string;
  private info: LockInfo;
  /** Puts of our object, one at a time and in order. */
  private writes: Promise<void> = Promise.resolve();
  private cancelRefresh: (() => void) | undefined;
  private refreshing: Promise<void> = Promise.resolve();
  private stopped = false;
  private lost: LockedError | undefined;
  private lastRefreshError: unknown;

  constructor(
    private readonly store: ObjectStore,
    info: LockInfo,
    private readonly clock: () => number,
    private readonly timer: Timer,
    private readonly refreshMs: number,
  ) {
    this.info = info;
    this.id = info.id;
    this.key = lockKey(info.id);
  }

  /** First put of our object; then refreshes start. */
  async announce(io: { signal?: AbortSignal }): Promise<void> {
    try {
      await this.store.put(this.key, encodeLock(this.info), { ...io, ifAbsent: true });
    } catch (error) {
      // Our id is random: 'exists' is our own earlier attempt, retried after an ambiguous failure.
      if (!(error instanceof StoreError && error.kind === 'exists')) throw error;
    }
    this.schedule();
  }

  async markHeld(): Promise<void> {
    await this.write({ ...this.info, state: 'held', refreshed: this.clock() });
  }

  private write(next: LockInfo): Promise<void> {
    const done = this.writes.then(async () => {
      await this.store.put(this.key, encodeLock(next));
      this.info = next;
    });
    this.writes = done.catch(() => undefined);
    return done;
  }

  private schedule(): void {
    if (this.stopped || this.lost !== undefined) return;
    this.cancelRefresh = this.timer.schedule(() => (this.refreshing = this.refresh()), this.refreshMs);
  }

  private async refresh(): Promise<void> {
    if (this.stopped) return;
    const now = this.clock();
    if (now - this.info.refreshed >= this.info.ttlMs) {
      // Others may already have taken over: do not put the lock back.
      this.lost = this.expiredError(now);
      return;
    }
    try {
      if ((await this.store.head(this.key)) === undefined) {
        this.lost = this.lostError('was removed by another process (cdp-s3 --force-unlock?)');
        return;
      }
      if (this.stopped) return;
      await this.write({ ...this.info, refreshed: now });
      this.lastRefreshError = undefined;
    } catch (error) {
      this.lastRefreshError = error; // the next refresh tries again; check() reports it if the lock expires
    }
    this.schedule();
  }

  lostError(what: string, cause?: unknown): LockedError {
    return new LockedError(
      `this ${this.info.command} lost its lock on the repository: ${this.key} ${what}; it stops before committing anything more: run it again`,
      undefined,
      cause === undefined ? {} : { cause },
    );
  }

  private expiredError(now: number): LockedError {
    const error = this.lastRefreshError;
    const reason = error === undefined ? '' : ` (last refresh failed: ${error instanceof Error ? error.message : String(error)})`;
    return this.lostError(`went unrefreshed for ${now - this.info.refreshed} ms, past its ${this.info.ttlMs} ms lifetime${reason}, so another writer may have taken it`, error);
  }

  check(): void {
    if (this.lost !== undefined) throw this.lost;
    const now = this.clock();
    if (now - this.info.refreshed >= this.info.ttlMs) {
      this.lost = this.expiredError(now);
      throw this.lost;
    }
  }

  private async stop(): Promise<void> {
    this.stopped = true;
    this.cancelRefresh?.();
    await this.refreshing;
    await this.writes;
  }

  async release(): Promise<void> {
    if (this.stopped) return;
    await this.stop();
    let problem: unknown;
    try {
      this.check();
    } catch (error) {
      problem = error;
    }
    await this.store.delete(this.key);
    if (problem !== undefined) throw problem;
  }

  /** Gives up while taking the lock: stop, and remove our object if we can. */
  async abandon(): Promise<void> {
    await this.stop();
    await this.store.delete(this.key).catch(() => undefined);
  }
}
