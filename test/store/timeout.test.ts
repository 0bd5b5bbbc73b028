// TimeoutStore with an injected timer (ManualClock): the test decides when an attempt's time is
// up, so nothing here waits for real time to pass (turns(1) lets the store's promise chains
// settle up to where they wait). (test/faults/ drives real stalled HTTP requests.)

import { describe, expect, it } from 'vitest';
import { AbortedError, InvalidArgumentError, StoreError } from '../../src/errors.js';
import { RetryingStore, type RetryInfo } from '../../src/store/retry.js';
import { TimeoutStore } from '../../src/store/timeout.js';
import type { ObjectInfo, ObjectStore, ObjectVersion } from '../../src/store/types.js';
import { ManualClock } from '../helpers/manual-clock.js';
import { outcome, turns } from '../helpers/wait.js';
import { collect, expectStoreError } from './conformance.js';

const MiB = 1024 * 1024;

/** Calls that never answer on their own: they end only when their signal aborts (or, with `deaf`, never). */
function stalledStore(options: { deaf?: boolean; answerFrom?: number } = {}) {
  const signals: AbortSignal[] = [];
  const answer = <T>(signal: AbortSignal | undefined, value: T): Promise<T> => {
    signals.push(signal!);
    if (signals.length >= (options.answerFrom ?? Infinity)) return Promise.resolve(value);
    return new Promise<T>((_, reject) => {
      if (options.deaf !== true) signal?.addEventListener('abort', () => reject(new AbortedError('cancelled')));
    });
  };
  const store: ObjectStore & { signals: AbortSignal[] } = {
    location: 'fake://',
    signals,
    get: (_key, o) => answer(o?.signal, new Uint8Array([42])),
    put: (_key, _body, o) => answer(o?.signal, undefined),
    head: (key, o) => answer(o?.signal, { key, size: 1 }),
    delete: (_key, o) => answer(o?.signal, undefined),
    deleteMany: (_keys, o) => answer(o?.signal, undefined),
    sync: async () => undefined,
    list: async function* (_prefix, o): AsyncGenerator<ObjectInfo> {
      yield await answer(o?.signal, { key: 'a', size: 1 });
    },
    objectLock: (o) => answer(o?.signal, { enabled: true as const }),
    retain: (_key, _retention, o) => answer(o?.signal, undefined),
    listVersions: async function* (_prefix, o): AsyncGenerator<ObjectVersion> {
      yield await answer(o?.signal, { key: 'a', versionId: 'v1', latest: true, deleteMarker: false, size: 1 });
    },
  };
  return store;
}

/** A whole-object GET whose headers (reporting the body's length) and body arrive when the test says. */
function slowBodyStore() {
  let headers: ((bytes: number) => void) | undefined;
  let body: (() => void) | undefined;
  const store: ObjectStore = {
    ...stalledStore(),
    get: (_key, o) =>
      new Promise<Uint8Array>((resolve, reject) => {
        o?.signal?.addEventListener('abort', () => reject(new AbortedError('cancelled')));
        headers = (bytes) => o?.onBodyLength?.(bytes);
        body = () => resolve(new Uint8Array([42]));
      }),
  };
  return { store, headers: (bytes: number) => headers!(bytes), body: () => body!() };
}

describe('TimeoutStore', () => {
  it('budgets baseMs plus the bytes moved at the minimum throughput', async () => {
    const clock = new ManualClock();
    const store = new TimeoutStore(stalledStore({ answerFrom: 1 }), { baseMs: 1000, minBytesPerSecond: MiB, timer: clock });
    await store.put('k', new Uint8Array(2 * MiB));
    await store.get('k', { range: { offset: 0, length: MiB / 2 } });
    await store.get('k');
    await store.head('k');
    await store.delete('k');
    // The whole-object GET: baseMs, as this adapter never reports its body's length (see below).
    expect(clock.delays).toEqual([3000, 1500, 1000, 1000, 1000]);
    expect(clock.waiting).toBe(0); // an attempt that answered cancels its timer
  });

  it('a whole-object GET has baseMs for its headers: a stalled header times out then', async () => {
    const clock = new ManualClock();
    const slow = slowBodyStore();
    const store = new TimeoutStore(slow.store, { baseMs: 1000, minBytesPerSecond: MiB, timer: clock });
    const pending = store.get('deltas/7');
    await turns(1);
    expect(clock.delays).toEqual([1000]);
    await clock.advance(1000);
    const error = await expectStoreError(pending, 'retryable');
    expect(error.message).toBe('GET deltas/7 in fake://: no answer within 1.0 s (the per-attempt timeout)');
  });

  it("once the headers report the body's length, the deadline moves to that length's budget from then (a large object on a slow link)", async () => {
    const clock = new ManualClock();
    const slow = slowBodyStore();
    const store = new TimeoutStore(slow.store, { baseMs: 1000, minBytesPerSecond: MiB, timer: clock });
    const pending = store.get('checkpoints/9');
    const state = outcome(pending);
    await turns(1);
    await clock.advance(600);
    slow.headers(64 * MiB);
    expect(clock.delays).toEqual([1000, 65_000]);
    expect(clock.waiting).toBe(1); // the headers' deadline is gone
    await clock.advance(64_999); // 1 ms before the body's deadline, long past any fixed budget
    await turns(1);
    expect(state()).toBeUndefined();
    slow.body();
    expect(Array.from(await pending)).toEqual([42]);
    expect(clock.waiting).toBe(0);
    // And the body's deadline is enforced: the same again, but the body never comes.
    const stalledBody = store.get('checkpoints/9');
    await turns(1);
    slow.headers(2 * MiB);
    await clock.advance(3000);
    const error = await expectStoreError(stalledBody, 'retryable');
    expect(error.message).toBe(`GET checkpoints/9 in fake://: no answer within 3.0 s (the per-attempt timeout for ${2 * MiB} bytes)`);
  });

  it('a stalled attempt fails as retryable when its time is up, and its signal aborts the request', async () => {
    const clock = new ManualClock();
    const inner = stalledStore();
    const store = new TimeoutStore(inner, { baseMs: 2000, timer: clock });
    const pending = store.put('packs/p1', new Uint8Array(10));
    await turns(1);
    expect(inner.signals[0]!.aborted).toBe(false);
    await clock.advance(clock.untilNext());
    const error = await expectStoreError(pending, 'retryable');
    expect(error.message).toMatch(/^PUT packs\/p1 in fake:\/\/: no answer within 2\.0 s \(the per-attempt timeout for 10 bytes\)$/);
    expect(inner.signals[0]!.aborted).toBe(true);
  });

  it('fails at once even when the adapter ignores the signal', async () => {
    const clock = new ManualClock();
    const store = new TimeoutStore(stalledStore({ deaf: true }), { timer: clock });
    const pending = store.head('k');
    await turns(1);
    await clock.advance(clock.untilNext());
    await expectStoreError(pending, 'retryable');
  });

  it("the caller's cancellation is AbortedError, not a timeout, and cancels the timer", async () => {
    const clock = new ManualClock();
    for (const deaf of [false, true]) {
      const store = new TimeoutStore(stalledStore({ deaf }), { timer: clock });
      const controller = new AbortController();
      const pending = store.get('k', { signal: controller.signal });
      await turns(1);
      controller.abort();
      await expect(pending).rejects.toBeInstanceOf(AbortedError);
      expect(clock.waiting).toBe(0);
    }
  });

  it('under RetryingStore a timed-out attempt is retried, and onRetry names it', async () => {
    const clock = new ManualClock();
    const inner = stalledStore({ answerFrom: 2 });
    const retries: RetryInfo[] = [];
    const store = new RetryingStore(new TimeoutStore(inner, { timer: clock }), { sleep: async () => undefined, onRetry: (info) => retries.push(info) });
    const pending = store.get('deltas/5', { range: { offset: 0, length: 100 } });
    await turns(1);
    await clock.advance(clock.untilNext());
    expect(Array.from(await pending)).toEqual([42]);
    expect(inner.signals).toHaveLength(2);
    expect(retries.map((r) => [r.operation, r.key, r.attempt, r.error.kind])).toEqual([['get', 'deltas/5', 1, 'retryable']]);
    expect(retries[0]!.error.message).toMatch(/no answer within 10\.0 s/);
  });

  it('bounds each step of a listing', async () => {
    const clock = new ManualClock();
    const store = new TimeoutStore(stalledStore(), { baseMs: 500, timer: clock });
    const pending = collect(store.list('deltas/'));
    await turns(1);
    expect(clock.untilNext()).toBe(500);
    await clock.advance(500);
    const error = await expectStoreError(pending, 'retryable');
    expect(error.message).toMatch(/^LIST deltas\/ /);
    expect(clock.waiting).toBe(0);
  });

  it('bounds Object Lock calls and each step of a listing of versions', async () => {
    const clock = new ManualClock();
    const store = new TimeoutStore(stalledStore(), { baseMs: 500, timer: clock });
    const calls: Array<[string, Promise<unknown>]> = [
      ['RETAIN packs/p1', store.retain('packs/p1', { mode: 'governance', until: 1 })],
      ['LOCK ', store.objectLock()],
      ['LIST packs/', (async () => { for await (const _ of store.listVersions('packs/')) void _; })()],
    ];
    await turns(1);
    await clock.advance(500);
    for (const [what, pending] of calls) expect((await expectStoreError(pending, 'retryable')).message.startsWith(what)).toBe(true);
    expect(clock.waiting).toBe(0);
  });

  it.each([{ baseMs: 0 }, { baseMs: Number.POSITIVE_INFINITY }, { minBytesPerSecond: 0 }, { minBytesPerSecond: -5 }])(
    'refuses %o',
    (options) => {
      expect(() => new TimeoutStore(stalledStore(), options)).toThrow(InvalidArgumentError);
    },
  );

  it('a StoreError from the adapter passes through unchanged', async () => {
    const failing: ObjectStore = { ...stalledStore(), head: async () => Promise.reject(new StoreError('auth', 'denied')) };
    await expectStoreError(new TimeoutStore(failing).head('k'), 'auth');
  });
});
