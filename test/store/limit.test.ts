import { describe, expect, it } from 'vitest';
import { AbortedError } from '../../src/errors.js';
import { LimitedStore } from '../../src/store/limit.js';
import type { ObjectInfo, ObjectStore, ObjectVersion } from '../../src/store/types.js';
import { turns, waitUntil } from '../helpers/wait.js';

describe('LimitedStore', () => {
  it('never runs more than the limit at once, across operations', async () => {
    let active = 0;
    let peak = 0;
    // Each call stays running until the test lets it finish.
    const running: Array<() => void> = [];
    const slow = async <T>(value: T): Promise<T> => {
      active++;
      peak = Math.max(peak, active);
      await new Promise<void>((resolve) => running.push(resolve));
      active--;
      return value;
    };
    const inner: ObjectStore = {
      location: 'fake://',
      get: () => slow(new Uint8Array(0)),
      put: () => slow(undefined),
      head: () => slow(undefined),
      delete: () => slow(undefined),
      deleteMany: () => slow(undefined),
      sync: async () => undefined,
      list: async function* (): AsyncGenerator<ObjectInfo> {},
      objectLock: async () => ({ enabled: false, why: 'fake' }),
      retain: () => slow(undefined),
      listVersions: async function* (): AsyncGenerator<ObjectVersion> {},
    };
    const store = new LimitedStore(inner, { concurrency: 3 });
    const calls = Array.from({ length: 40 }, (_, i) => {
      switch (i % 4) {
        case 0:
          return store.get('k');
        case 1:
          return store.put('k', new Uint8Array(0));
        case 2:
          return store.head('k');
        default:
          return store.delete('k');
      }
    });
    let finished = 0;
    for (const call of calls) void call.then(() => finished++);
    while (finished < 40) {
      await turns(); // queued calls start as soon as a slot is free
      expect(active).toBe(Math.min(3, 40 - finished));
      running.shift()!();
      await turns();
    }
    await Promise.all(calls);
    expect(peak).toBe(3);
  });

  it('drops a queued call whose signal fired before its turn', async () => {
    let release: () => void = () => undefined;
    let calls = 0;
    const inner: ObjectStore = {
      location: 'fake://',
      get: async () => {
        calls++;
        await new Promise<void>((resolve) => (release = resolve));
        return new Uint8Array(0);
      },
      put: async () => undefined,
      head: async () => undefined,
      delete: async () => undefined,
      deleteMany: async () => undefined,
      sync: async () => undefined,
      list: async function* (): AsyncGenerator<ObjectInfo> {},
      objectLock: async () => ({ enabled: false, why: 'fake' }),
      retain: async () => undefined,
      listVersions: async function* (): AsyncGenerator<ObjectVersion> {},
    };
    const store = new LimitedStore(inner, { concurrency: 1 });
    const first = store.get('a');
    const controller = new AbortController();
    const queued = store.get('b', { signal: controller.signal });
    controller.abort();
    await waitUntil(() => calls === 1, 'the first call to reach the store');
    release();
    await first;
    await expect(queued).rejects.toBeInstanceOf(AbortedError);
    expect(calls).toBe(1);
  });
});
