// Repository locks against both stores: the local directory (FsStore, real conditional writes)
// and S3 on s3rver (which ignores If-None-Match), so the race tests show that the list-after-put
// rule alone keeps writers apart.

import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { log } from '../../src/core/log.js';
import { AbortedError, LockedError } from '../../src/errors.js';
import { LOCK_PREFIX } from '../../src/repo/keys.js';
import { DEFAULT_LOCK_TTL_MS, type LockInfo, type WriterLock, acquireWriterLock, encodeLock, forceUnlock, listLocks, lockKey } from '../../src/repo/lock.js';
import { openStore } from '../../src/store/open.js';
import { DelegatingStore } from '../../src/store/delegating.js';
import type { ObjectInfo, ObjectStore, PutOptions } from '../../src/store/types.js';
import { FaultStore } from '../helpers/fault-store.js';
import { makeImage } from '../helpers/images.js';
import { ManualClock } from '../helpers/manual-clock.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const BUCKET = 'locks';
const fixture = useS3Fixture('lock', [BUCKET]);
let counter = 0;

function freshStore(kind: 'fs' | 's3'): ObjectStore {
  const n = ++counter;
  return openStore(kind === 'fs' ? join(fixture.dir, `repo-${n}`) : `s3://${BUCKET}/repo-${n}`);
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: unknown) => error,
  );
}

async function expectLocked(promise: Promise<unknown>, message?: RegExp): Promise<LockedError> {
  const error = await rejection(promise);
  expect(error).toBeInstanceOf(LockedError);
  expect((error as LockedError).code).toBe('LOCKED');
  if (message !== undefined) expect((error as LockedError).message).toMatch(message);
  expect((error as LockedError).message).not.toContain('\n');
  return error as LockedError;
}

/** A lock object as a process that is gone would have left it. */
function deadLock(overrides: Partial<LockInfo> = {}): LockInfo {
  const now = Date.now();
  return {
    id: randomBytes(16).toString('hex'),
    host: 'gone-host',
    pid: 999_999,
    command: 'backup',
    since: now - 60_000,
    refreshed: now - 60_000,
    ttlMs: 200,
    state: 'held',
    ...overrides,
  };
}

/** Delegates to `inner`, holding back lock puts and lists at the points a test chooses. */
class GatedStore extends DelegatingStore {
  constructor(
    inner: ObjectStore,
    private readonly hooks: { beforeLockPut?: (options: PutOptions | undefined) => Promise<void>; afterLockList?: () => void },
  ) {
    super(inner);
  }
  override async put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    if (key.startsWith(LOCK_PREFIX)) await this.hooks.beforeLockPut?.(options);
    return this.inner.put(key, body, options);
  }
  override async *list(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectInfo> {
    yield* this.inner.list(prefix, options);
    if (prefix === LOCK_PREFIX) this.hooks.afterLockList?.();
  }
}

/** Of racing acquires, exactly one wins and the others fail with LOCKED; returns the winner. */
async function exactlyOneWins(attempts: Array<Promise<WriterLock>>): Promise<WriterLock> {
  const settled = await Promise.allSettled(attempts);
  const winners = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const losers = settled.flatMap((s) => (s.status === 'rejected' ? [s.reason as unknown] : []));
  expect(winners).toHaveLength(1);
  for (const loser of losers) {
    expect(loser).toBeInstanceOf(LockedError);
    expect((loser as LockedError).holder?.pid).toBe(process.pid);
  }
  return winners[0]!;
}

for (const kind of ['fs', 's3'] as const) {
  describe(`repository lock (${kind} store)`, () => {
    it('refuses a second writer, naming the holder; release lets the next one in', async () => {
      const store = freshStore(kind);
      const first = await acquireWriterLock(store, { command: 'backup' });
      expect(first.key).toBe(lockKey(first.id));
      const held = await listLocks(store);
      expect(held.map((e) => [e.key, e.lock?.state, e.lock?.pid, e.lock?.host])).toEqual([[first.key, 'held', process.pid, hostname()]]);

      const error = await expectLocked(
        acquireWriterLock(store, { command: 'scan' }),
        new RegExp(
          `^repository .* is locked by cdp-s3 backup \\(pid ${process.pid} on host ${hostname()}\\) since \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z; ` +
            `the lock expires at \\d{4}-\\d\\d-\\d\\dT[\\d:.]+Z unless that process refreshes it: ` +
            'if that process is gone, wait for the lock to expire or run with --force-unlock$',
        ),
      );
      expect(error.holder).toMatchObject({ key: first.key, host: hostname(), pid: process.pid, command: 'backup' });
      expect(error.holder!.expires! - error.holder!.since!).toBeGreaterThanOrEqual(5 * 60_000);
      // The refused writer left nothing behind.
      expect((await listLocks(store)).map((e) => e.key)).toEqual([first.key]);

      first.check();
      await first.release();
      expect(await listLocks(store)).toEqual([]);
      await first.release(); // twice is harmless

      const second = await acquireWriterLock(store, { command: 'scan' });
      await expectLocked(acquireWriterLock(store, { command: 'backup' }), /locked by cdp-s3 scan/);
      await second.release();
    });

    it('takes over an expired lock (left by a process that is gone) and removes it', async () => {
      const store = freshStore(kind);
      const dead = deadLock();
      await store.put(lockKey(dead.id), encodeLock(dead));
      const lock = await acquireWriterLock(store, { command: 'backup' });
      expect((await listLocks(store)).map((e) => e.key)).toEqual([lock.key]);
      await lock.release();
    });

    it('a writer that stops refreshing loses its lock to the next one and notices', async () => {
      const store = freshStore(kind);
      // Its refresh timer never fires: like a process frozen or killed after taking the lock.
      const clock = new ManualClock();
      const frozen = await acquireWriterLock(store, { command: 'backup', ttlMs: 60_000, clock: clock.now, timer: clock });
      clock.time += 59_999;
      await expectLocked(acquireWriterLock(store, { command: 'backup', clock: clock.now }));
      frozen.check();
      clock.time += 1;
      const next = await acquireWriterLock(store, { command: 'backup', clock: clock.now });
      expect(() => frozen.check()).toThrow(LockedError);
      expect(() => frozen.check()).toThrow(/this backup lost its lock on the repository: locks\/[0-9a-f]{32} went unrefreshed/);
      await expectLocked(frozen.release(), /lost its lock/);
      // The frozen writer's release did not touch the new holder's lock.
      expect((await listLocks(store)).map((e) => e.key)).toEqual([next.key]);
      next.check();
      await next.release();
    });

    it('refreshing keeps a lock alive well past its TTL', async () => {
      const store = freshStore(kind);
      const clock = new ManualClock();
      const lock = await acquireWriterLock(store, { command: 'backup', ttlMs: 600, clock: clock.now, timer: clock });
      const first = (await listLocks(store))[0]!.lock!;
      await clock.advance(1_500); // refreshes every 200 ms: the last at 1 400
      const later = (await listLocks(store))[0]!.lock!;
      expect(later.refreshed).toBe(first.refreshed + 1_400);
      expect(later.since).toBe(first.since);
      await expectLocked(acquireWriterLock(store, { command: 'scan', clock: clock.now }), /locked by cdp-s3 backup/);
      lock.check();
      await lock.release();
      expect(await listLocks(store)).toEqual([]);
    });

    it('of two writers started together exactly one wins (20 rounds)', async () => {
      const store = freshStore(kind);
      for (let round = 0; round < 20; round++) {
        const winner = await exactlyOneWins([acquireWriterLock(store, { command: 'backup' }), acquireWriterLock(store, { command: 'backup' })]);
        expect((await listLocks(store)).map((e) => e.key)).toEqual([winner.key]);
        await winner.release();
      }
      expect(await listLocks(store)).toEqual([]);
    });

    it('of writers that all pass the first check before any puts its lock, exactly one wins (10 rounds of 2 and 3)', async () => {
      const inner = freshStore(kind);
      for (let round = 0; round < 10; round++) {
        const writers = round % 2 === 0 ? 2 : 3;
        // Every lock put waits until all writers have made their first listing: each one sees an
        // unlocked repository, and only the listing after its put can keep them apart.
        let lists = 0;
        let open!: () => void;
        const allListed = new Promise<void>((resolve) => (open = resolve));
        const store = new GatedStore(inner, {
          afterLockList: () => {
            if (++lists === writers) open();
          },
          beforeLockPut: async (options) => {
            if (options?.ifAbsent === true) await allListed;
          },
        });
        const winner = await exactlyOneWins(Array.from({ length: writers }, () => acquireWriterLock(store, { command: 'backup' })));
        const entries = await listLocks(inner);
        expect(entries.map((e) => [e.key, e.lock?.state])).toEqual([[winner.key, 'held']]);
        await winner.release();
      }
    });

    it('a writer whose put lands after another writer already won backs off, though it started first', async () => {
      // Sorting by start time alone would let the slow writer win too: it must see "held" and give up.
      const inner = freshStore(kind);
      let letSlowPut!: () => void;
      const slowMayPut = new Promise<void>((resolve) => (letSlowPut = resolve));
      let slowListed!: () => void;
      let slowLists = 0;
      const slowHasListed = new Promise<void>((resolve) => (slowListed = resolve));
      const slowStore = new GatedStore(inner, {
        afterLockList: () => {
          slowLists++;
          slowListed();
        },
        beforeLockPut: async (options) => {
          if (options?.ifAbsent === true) await slowMayPut;
        },
      });
      const started = Date.now();
      const slow = acquireWriterLock(slowStore, { command: 'scan', clock: () => started });
      await slowHasListed;
      const fast = await acquireWriterLock(inner, { command: 'backup', clock: () => started + 1 }); // a later start time
      letSlowPut();
      const error = await expectLocked(slow, /locked by cdp-s3 backup/);
      expect(error.holder?.key).toBe(fast.key);
      expect(slowLists).toBe(2); // it backed off at its first list after its put, without waiting for the winner
      expect((await listLocks(inner)).map((e) => e.key)).toEqual([fast.key]);
      fast.check();
      await fast.release();
    });

    it('a corrupt lock object blocks with a clear message; forceUnlock clears it', async () => {
      const store = freshStore(kind);
      const key = lockKey(randomBytes(16).toString('hex'));
      await store.put(key, randomBytes(100));
      const error = await expectLocked(
        acquireWriterLock(store, { command: 'backup' }),
        new RegExp(`is locked by an unreadable lock object \\(lock ${key}: .*\\): if no other cdp-s3 process is writing, run with --force-unlock to remove it$`),
      );
      expect(error.holder).toEqual({ key });
      // A key under locks/ that is not a lock name blocks the same way.
      await store.put(`${LOCK_PREFIX}junk`, new Uint8Array([1]));
      const removed = await forceUnlock(store);
      expect(removed.map((e) => e.key).sort()).toEqual([key, `${LOCK_PREFIX}junk`].sort());
      expect(removed.every((e) => e.lock === undefined && e.error !== undefined)).toBe(true);
      const lock = await acquireWriterLock(store, { command: 'backup' });
      await lock.release();
    });

    it('forceUnlock removes live locks; their holder finds out at its next refresh and does not put its lock back', async () => {
      const store = freshStore(kind);
      const clock = new ManualClock();
      const holder = await acquireWriterLock(store, { command: 'backup', ttlMs: 3_000, refreshMs: 50, timer: clock });
      const stale = deadLock({ ttlMs: 60_000, refreshed: Date.now() });
      await store.put(lockKey(stale.id), encodeLock(stale));
      const removed = await forceUnlock(store);
      expect(removed.map((e) => e.key).sort()).toEqual([holder.key, lockKey(stale.id)].sort());
      expect(removed.find((e) => e.key === holder.key)?.lock).toMatchObject({ pid: process.pid, command: 'backup', state: 'held' });
      holder.check(); // it cannot know yet
      await clock.advance(50); // its next refresh
      expect(clock.waiting).toBe(0); // and no more refreshes
      expect(() => holder.check()).toThrow(/this backup lost its lock on the repository: locks\/[0-9a-f]{32} was removed by another process/);
      expect(await listLocks(store)).toEqual([]);
      await expectLocked(holder.release(), /was removed/);
      const next = await acquireWriterLock(store, { command: 'backup' });
      await next.release();
    });

    it('a cancelled acquire leaves no lock behind', async () => {
      const store = freshStore(kind);
      const controller = new AbortController();
      const gated = new GatedStore(store, {
        beforeLockPut: async () => {
          controller.abort(new Error('SIGINT'));
        },
      });
      await expect(acquireWriterLock(gated, { command: 'backup', signal: controller.signal })).rejects.toBeInstanceOf(AbortedError);
      expect(await listLocks(store)).toEqual([]);
    });

    describe('backup', () => {
      const REGION = 64 * 1024;

      async function repoWithSource(): Promise<{ store: ObjectStore; source: string }> {
        const store = freshStore(kind);
        const source = join(fixture.dir, `disk-${++counter}.img`);
        await writeFile(source, makeImage({ size: 1024 * 1024, regionSize: REGION, seed: counter }));
        await init({ store, from: source, regionSize: REGION });
        return { store, source };
      }

      it('is refused while another writer holds the lock, and releases its own lock when done', async () => {
        const { store, source } = await repoWithSource();
        const other = await acquireWriterLock(store, { command: 'scan' });
        await expectLocked(backup({ store, source, workers: 1 }), /locked by cdp-s3 scan/);
        expect((await log({ store })).entries).toEqual([]);
        await other.release();
        expect((await backup({ store, source, workers: 1 })).seq).toBe(1);
        expect(await listLocks(store)).toEqual([]);
        // forceUnlock: a stale lock is removed first.
        const stale = deadLock({ ttlMs: 60_000, refreshed: Date.now() });
        await store.put(lockKey(stale.id), encodeLock(stale));
        await expectLocked(backup({ store, source, workers: 1 }), /pid 999999 on host gone-host/);
        expect((await backup({ store, source, workers: 1, forceUnlock: true })).seq).toBe(2);
        expect(await listLocks(store)).toEqual([]);
      });

      it('commits nothing when its lock is removed while it runs', async () => {
        const { store, source } = await repoWithSource();
        let removed = false;
        const clock = new ManualClock();
        const fault = new FaultStore(store, {
          beforePut: async (key) => {
            if (key.startsWith('packs/') && !removed) {
              removed = true;
              await forceUnlock(store);
              await clock.advance(DEFAULT_LOCK_TTL_MS); // the next refresh finds the lock gone
            }
          },
        });
        await expectLocked(backup({ store: fault, source, workers: 1, lockTimer: clock }), /this backup lost its lock on the repository/);
        expect(removed).toBe(true);
        expect((await log({ store })).entries).toEqual([]);
        expect(await listLocks(store)).toEqual([]);
        expect((await backup({ store, source, workers: 1 })).seq).toBe(1);
      });
    });
  });
}
