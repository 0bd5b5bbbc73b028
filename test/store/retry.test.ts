import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AbortedError, InvalidArgumentError, StoreError } from '../../src/errors.js';
import { FsStore } from '../../src/store/fs.js';
import { RetryingStore, type RetryInfo } from '../../src/store/retry.js';
import type { ObjectInfo, ObjectStore, ObjectVersion } from '../../src/store/types.js';
import { FaultStore } from '../helpers/fault-store.js';
import { collect, expectStoreError } from './conformance.js';

/** An inner store whose get() answers from a script of errors, then succeeds. */
function scriptedStore(script: Array<StoreError | 'ok'>): ObjectStore & { calls: number } {
  const store = {
    location: 'fake://',
    calls: 0,
    async get(): Promise<Uint8Array> {
      const step = script[store.calls++] ?? 'ok';
      if (step !== 'ok') throw step;
      return new Uint8Array([42]);
    },
    put: async () => undefined,
    head: async () => undefined,
    delete: async () => undefined,
    deleteMany: async () => undefined,
    sync: async () => undefined,
    list: async function* (): AsyncGenerator<ObjectInfo> {},
    objectLock: async () => ({ enabled: false as const, why: 'fake' }),
    retain: async () => undefined,
    listVersions: async function* (): AsyncGenerator<ObjectVersion> {},
  };
  return store;
}

const retryable = (n: number): StoreError => new StoreError('retryable', `slow down ${n}`, { key: 'k' });
const noSleep = async (): Promise<void> => undefined;

describe('RetryingStore', () => {
  it('retries retryable and unreachable errors, then succeeds', async () => {
    const inner = scriptedStore([retryable(1), new StoreError('unreachable', 'refused'), 'ok']);
    const retries: RetryInfo[] = [];
    const store = new RetryingStore(inner, { sleep: noSleep, onRetry: (info) => retries.push(info) });
    expect(await store.get('k')).toEqual(new Uint8Array([42]));
    expect(inner.calls).toBe(3);
    expect(retries.map((r) => [r.operation, r.key, r.attempt, r.error.kind])).toEqual([
      ['get', 'k', 1, 'retryable'],
      ['get', 'k', 2, 'unreachable'],
    ]);
  });

  it('gives up after the configured attempts with the last error', async () => {
    const inner = scriptedStore([retryable(1), retryable(2), retryable(3), retryable(4)]);
    const store = new RetryingStore(inner, { attempts: 3, sleep: noSleep });
    const error = await expectStoreError(store.get('k'), 'retryable');
    expect(error.message).toBe('slow down 3 (gave up after 3 attempts)');
    expect(inner.calls).toBe(3);
  });

  it.each(['not-found', 'auth', 'permanent', 'exists', 'no-bucket'] as const)('does not retry %s', async (kind) => {
    const inner = scriptedStore([new StoreError(kind, kind), 'ok']);
    const store = new RetryingStore(inner, { sleep: noSleep });
    await expectStoreError(store.get('k'), kind);
    expect(inner.calls).toBe(1);
  });

  it('backs off by full jitter: random · min(max, base · 2^(attempt-1)), through the injected sleep', async () => {
    // Fractions near 1 make every delay close to its cap, so a schedule without backoff (or with
    // the wrong growth, cap or jitter) cannot match.
    const fractions = [0.5, 0.999, 0.25, 0.999, 0.75, 0.999, 0.999, 0.1, 0.999];
    const slept: number[] = [];
    const reported: number[] = [];
    const inner = scriptedStore(Array.from({ length: 9 }, (_, i) => retryable(i)));
    let draws = 0;
    const store = new RetryingStore(inner, {
      attempts: 10,
      baseDelayMs: 100,
      maxDelayMs: 1000,
      random: () => fractions[draws++]!,
      sleep: async (ms) => {
        slept.push(ms);
      },
      onRetry: (info) => reported.push(info.delayMs),
    });
    await store.get('k');
    const caps = [100, 200, 400, 800, 1000, 1000, 1000, 1000, 1000];
    const expected = caps.map((cap, i) => fractions[i]! * cap);
    expect(slept).toEqual(expected);
    expect(reported).toEqual(expected);
    expect(draws).toBe(9);
  });

  it('stops when the signal fires during a backoff sleep', async () => {
    const inner = scriptedStore(Array.from({ length: 100 }, (_, i) => retryable(i)));
    // The real sleep, for an hour: only the abort can end it before the test times out.
    let retried!: () => void;
    const backingOff = new Promise<void>((resolve) => (retried = resolve));
    const store = new RetryingStore(inner, { baseDelayMs: 3_600_000, maxDelayMs: 3_600_000, attempts: 100, random: () => 1 - Number.EPSILON, onRetry: () => retried() });
    const controller = new AbortController();
    const pending = store.get('k', { signal: controller.signal });
    await backingOff; // onRetry runs just before the sleep starts
    controller.abort();
    await expect(pending).rejects.toBeInstanceOf(AbortedError);
    expect(inner.calls).toBe(1);
  });

  it('does not start when the signal has already fired', async () => {
    const inner = scriptedStore(['ok']);
    const controller = new AbortController();
    controller.abort();
    await expect(new RetryingStore(inner).get('k', { signal: controller.signal })).rejects.toBeInstanceOf(AbortedError);
    expect(inner.calls).toBe(0);
  });

  it('retries a listing that fails before its first item, but not after', async () => {
    let starts = 0;
    const inner: ObjectStore = {
      ...scriptedStore([]),
      list: async function* (): AsyncGenerator<ObjectInfo> {
        starts++;
        if (starts === 1) throw retryable(0);
        yield { key: 'a', size: 1 };
        yield { key: 'b', size: 2 };
        if (starts === 2) throw retryable(1);
      },
    };
    const store = new RetryingStore(inner, { sleep: noSleep });
    const seen: string[] = [];
    const error: unknown = await (async () => {
      for await (const item of store.list('')) seen.push(item.key);
    })().catch((e: unknown) => e);
    expect(seen).toEqual(['a', 'b']);
    expect((error as StoreError).kind).toBe('retryable');
    expect(starts).toBe(2);
    // A fresh iteration starts over and completes.
    expect((await collect(store.list(''))).map((o) => o.key)).toEqual(['a', 'b']);
  });
});

describe('RetryingStore: a conditional put whose reply was lost', () => {
  /** A real FsStore (its ifAbsent put is enforced by link()) that commits the first put of `key` and then loses the reply. */
  async function lostReply(key: string) {
    const dir = await mkdtemp(join(tmpdir(), 'cdp-retry-'));
    const fs = new FsStore(dir);
    let lost = 0;
    const ranges: Array<{ offset: number; length: number } | undefined> = [];
    const faults = new FaultStore(fs, {
      beforeGet: (_key, options) => {
        ranges.push(options?.range);
      },
      afterPut: (putKey) => {
        if (putKey === key && lost++ === 0) throw new StoreError('retryable', `${putKey}: socket hang up (injected after commit)`, { key: putKey });
      },
    });
    const retries: RetryInfo[] = [];
    const store = new RetryingStore(faults, { sleep: noSleep, onRetry: (info) => retries.push(info) });
    return { fs, faults, store, retries, ranges, lost: () => lost, cleanup: () => rm(dir, { recursive: true, force: true }) };
  }

  it('is ours when the object read back is byte-identical: the put succeeds', async () => {
    const t = await lostReply('deltas/1');
    try {
      const body = new Uint8Array([1, 2, 3, 4, 5]);
      await t.store.put('deltas/1', body, { ifAbsent: true });
      expect(t.lost()).toBe(1);
      expect(t.retries.map((r) => [r.operation, r.key, r.attempt, r.error.kind])).toEqual([['put', 'deltas/1', 1, 'retryable']]);
      expect(t.faults.puts).toEqual(['deltas/1', 'deltas/1']); // the retry reached the store and got 'exists'
      // A HEAD, then a read of exactly the stored size (its timeout sized to it), not a whole-object GET.
      expect(t.faults.heads).toEqual(['deltas/1']);
      expect(t.faults.gets).toEqual([{ key: 'deltas/1', ranged: true }]);
      expect(t.ranges).toEqual([{ offset: 0, length: 5 }]);
      expect(Array.from(await t.fs.get('deltas/1'))).toEqual(Array.from(body));
    } finally {
      await t.cleanup();
    }
  });

  it("is another writer's when the bytes differ: 'exists' surfaces and the stored object stays", async () => {
    const t = await lostReply('deltas/1');
    try {
      await t.fs.put('deltas/1', new Uint8Array([9, 9, 9])); // the other writer's, before ours
      // Our first attempt gets 'exists' at once: not retried, no read-back.
      await expectStoreError(t.store.put('deltas/1', new Uint8Array([1, 2, 3]), { ifAbsent: true }), 'exists');
      expect(t.faults.gets).toEqual([]);
      // An ambiguous first attempt (reply lost before the store was reached), then 'exists' with other bytes.
      let failed = false;
      const store = new RetryingStore(
        new FaultStore(t.fs, {
          beforePut: () => {
            if (!failed) {
              failed = true;
              throw new StoreError('retryable', 'socket hang up (injected)', { key: 'deltas/1' });
            }
          },
        }),
        { sleep: noSleep },
      );
      await expectStoreError(store.put('deltas/1', new Uint8Array([1, 2, 3]), { ifAbsent: true }), 'exists');
      expect(Array.from(await t.fs.get('deltas/1'))).toEqual(Array.from(new Uint8Array([9, 9, 9])));
    } finally {
      await t.cleanup();
    }
  });

  it("is another writer's when the sizes differ: 'exists' surfaces after a HEAD, without downloading the object", async () => {
    const t = await lostReply('deltas/1');
    try {
      await t.fs.put('deltas/1', new Uint8Array(1000).fill(9)); // the other writer's, larger than ours
      let failed = false;
      const faults = new FaultStore(t.fs, {
        beforePut: () => {
          if (!failed) {
            failed = true;
            throw new StoreError('retryable', 'socket hang up (injected)', { key: 'deltas/1' });
          }
        },
      });
      const store = new RetryingStore(faults, { sleep: noSleep });
      await expectStoreError(store.put('deltas/1', new Uint8Array([1, 2, 3]), { ifAbsent: true }), 'exists');
      expect(faults.heads).toEqual(['deltas/1']);
      expect(faults.gets).toEqual([]);
      // Same size, other bytes: read back (ranged), and still not ours.
      failed = false;
      await expectStoreError(store.put('deltas/1', new Uint8Array(1000).fill(8), { ifAbsent: true }), 'exists');
      expect(faults.gets).toEqual([{ key: 'deltas/1', ranged: true }]);
      expect(Array.from(await t.fs.get('deltas/1'))).toEqual(Array.from(new Uint8Array(1000).fill(9)));
    } finally {
      await t.cleanup();
    }
  });

  it('a put without ifAbsent is not read back', async () => {
    const t = await lostReply('packs/a');
    try {
      await t.store.put('packs/a', new Uint8Array([7]));
      expect(t.faults.gets).toEqual([]);
      expect(Array.from(await t.fs.get('packs/a'))).toEqual(Array.from(new Uint8Array([7])));
    } finally {
      await t.cleanup();
    }
  });
});

describe('RetryingStore options', () => {
  it.each([{ attempts: 0 }, { attempts: 1.5 }, { baseDelayMs: -1 }, { maxDelayMs: Number.NaN }])('refuses %o', (options) => {
    expect(() => new RetryingStore(scriptedStore([]), options)).toThrow(InvalidArgumentError);
  });
});
