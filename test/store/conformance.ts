// One behavioural suite for every ObjectStore adapter: what the repository layer relies on.
//
// Ranges: a zero-length range is allowed when offset <= size and returns no bytes (the S3
// adapter answers it with a HEAD, since HTTP cannot express an empty range). Any range that
// ends past the object is a StoreError of kind 'permanent'.

import { randomBytes } from 'node:crypto';
import pLimit from 'p-limit';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { StoreError } from '../../src/errors.js';
import type { ObjectInfo, ObjectStore } from '../../src/store/types.js';

export interface StoreFixture {
  store: ObjectStore;
  cleanup(): Promise<void>;
}

/** What the server behind an adapter really does, where test servers fall short of S3. */
export interface StoreCapabilities {
  /** put({ ifAbsent }) really refuses an existing key (s3rver ignores If-None-Match). */
  conditionalWrites: boolean;
  /**
   * list() is in byte order even when a key has a character below '/' ('a-', 'a.b') next to a
   * directory of keys ('a/1'). s3rver walks its directories instead, so it lists 'a/1' first.
   */
  byteOrderListing: boolean;
  /**
   * What a put under retention does where the bucket has no Object Lock: refused (S3, RGW, a
   * local directory), or stored without one (s3rver ignores the headers; cdp-s3 asks objectLock()
   * before it ever sets a retention).
   */
  retentionWithoutLock: 'refused' | 'ignored';
  /** listVersions works (s3rver answers ListObjectVersions with 405; cdp-s3 lists versions only in Object Lock buckets). */
  listVersions: boolean;
}

export async function collect(iterable: AsyncIterable<ObjectInfo>): Promise<ObjectInfo[]> {
  const items: ObjectInfo[] = [];
  for await (const item of iterable) items.push(item);
  return items;
}

export async function expectStoreError(promise: Promise<unknown>, kind: StoreError['kind']): Promise<StoreError> {
  const error: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error, `expected StoreError '${kind}'`).toBeInstanceOf(StoreError);
  expect((error as StoreError).kind).toBe(kind);
  return error as StoreError;
}

const bytes = (text: string): Uint8Array => new TextEncoder().encode(text);

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

export function describeStoreConformance(name: string, makeStore: () => Promise<StoreFixture>, capabilities: StoreCapabilities): void {
  describe(`ObjectStore conformance: ${name}`, () => {
    let fixture: StoreFixture;
    let store: ObjectStore;

    beforeEach(async () => {
      fixture = await makeStore();
      store = fixture.store;
    });
    afterEach(async () => {
      await fixture.cleanup();
    });

    it('round-trips empty, small and 20 MiB bodies bit-exact', async () => {
      const bodies: Array<[string, Uint8Array]> = [
        ['empty', new Uint8Array(0)],
        ['small', bytes('hello, store')],
        ['large', randomBytes(20 * 1024 * 1024)],
      ];
      for (const [key, body] of bodies) await store.put(key, body);
      for (const [key, body] of bodies) {
        const read = await store.get(key);
        expect(read.length).toBe(body.length);
        expect(Buffer.from(read).equals(Buffer.from(body))).toBe(true);
        expect(await store.head(key)).toEqual({ key, size: body.length });
      }
    });

    it("reports a whole-object GET's body length before returning it (what the per-attempt timeout budgets by)", async () => {
      const body = randomBytes(70_000);
      await store.put('sized', body);
      const reported: number[] = [];
      const read = await store.get('sized', { onBodyLength: (bytes) => reported.push(bytes) });
      expect(reported).toEqual([body.length]);
      expect(Buffer.from(read).equals(body)).toBe(true);
    });

    it('reads ranges at the start, middle and end, and empty ranges', async () => {
      const body = randomBytes(100_000);
      await store.put('ranged', body);
      const cases: Array<[number, number]> = [
        [0, 10],
        [0, body.length],
        [12_345, 50_000],
        [body.length - 10, 10],
        [body.length - 1, 1],
      ];
      for (const [offset, length] of cases) {
        const read = await store.get('ranged', { range: { offset, length } });
        expect(Buffer.from(read).equals(body.subarray(offset, offset + length)), `range ${offset}+${length}`).toBe(true);
      }
      expect((await store.get('ranged', { range: { offset: 500, length: 0 } })).length).toBe(0);
      expect((await store.get('ranged', { range: { offset: body.length, length: 0 } })).length).toBe(0);
    });

    it('reads a range into the caller\'s buffer when one is given', async () => {
      const body = randomBytes(300_000);
      await store.put('into', body);
      const into = new Uint8Array(new ArrayBuffer(256 * 1024));
      const got = await store.get('into', { range: { offset: 1000, length: 200_000 }, into });
      expect(got.buffer).toBe(into.buffer);
      expect(got.byteOffset).toBe(0);
      expect(Buffer.from(got).equals(body.subarray(1000, 201_000))).toBe(true);
      // A buffer too small is not used.
      const small = new Uint8Array(10);
      const whole = await store.get('into', { range: { offset: 0, length: 100 }, into: small });
      expect(whole.buffer).not.toBe(small.buffer);
      expect(Buffer.from(whole).equals(body.subarray(0, 100))).toBe(true);
    });

    it('refuses ranges past the end', async () => {
      await store.put('short', randomBytes(1000));
      await expectStoreError(store.get('short', { range: { offset: 990, length: 20 } }), 'permanent');
      await expectStoreError(store.get('short', { range: { offset: 1000, length: 1 } }), 'permanent');
      await expectStoreError(store.get('short', { range: { offset: 5000, length: 10 } }), 'permanent');
      await expectStoreError(store.get('short', { range: { offset: 1001, length: 0 } }), 'permanent');
    });

    it('reports a missing key as not-found with the key', async () => {
      const error = await expectStoreError(store.get('missing/key'), 'not-found');
      expect(error.key).toBe('missing/key');
      await expectStoreError(store.get('missing/key', { range: { offset: 0, length: 4 } }), 'not-found');
      expect(await store.head('missing/key')).toBeUndefined();
    });

    const listingCase = (keys: string[], prefixes: string[]) => async () => {
      const shuffled = [...keys].sort(() => Math.random() - 0.5);
      await Promise.all(shuffled.map((key, i) => store.put(key, randomBytes(i + 1))));
      const sizes = new Map(shuffled.map((key, i) => [key, i + 1]));
      for (const prefix of prefixes) {
        const expected = keys
          .filter((k) => k.startsWith(prefix))
          .sort(byteOrder)
          .map((key) => ({ key, size: sizes.get(key) ?? -1 }));
        expect(await collect(store.list(prefix)), `prefix ${JSON.stringify(prefix)}`).toEqual(expected);
      }
    };

    // No key is also a directory of others ('a' with 'a/1'): see the key rules in types.ts.
    it(
      'lists by prefix in byte order with sizes, excluding other prefixes',
      listingCase(
        ['a/1', 'a/10', 'a/2', 'a/x/y', 'a/x0', 'a0', 'ab', 'b/1', 'deltas/0000000000000001', 'deltas/0000000000000002'],
        ['', 'a', 'a/', 'a/x', 'a/x/', 'b/', 'deltas/', 'deltas/000', 'nothing/', 'a/1'],
      ),
    );

    it.skipIf(!capabilities.byteOrderListing)(
      `lists in byte order around '/'${capabilities.byteOrderListing ? '' : ' (skipped: this server lists directory-first)'}`,
      listingCase(['a-', 'a.b', 'a/1', 'a/x-y', 'a/x/y', 'a/x0', 'a0'], ['', 'a', 'a/', 'a/x']),
    );

    it('lists more than 1000 keys (pagination)', async () => {
      const count = 1100;
      const keys = Array.from({ length: count }, (_, i) => `many/${String(i).padStart(6, '0')}`);
      const limit = pLimit(32);
      await Promise.all(keys.map((key) => limit(() => store.put(key, bytes(key)))));
      await store.put('other/0', bytes('x'));
      const listed = await collect(store.list('many/'));
      expect(listed.map((o) => o.key)).toEqual(keys);
      expect(listed.every((o) => o.size === o.key.length)).toBe(true);
    });

    it('lists from after a key, and at most a limit of keys (start-after, across pages)', async () => {
      const keys = Array.from({ length: 1050 }, (_, i) => `from/${String(i).padStart(6, '0')}`);
      const limit = pLimit(32);
      await Promise.all(keys.map((key) => limit(() => store.put(key, bytes(key)))));
      expect((await collect(store.list('from/', { startAfter: 'from/000999' }))).map((o) => o.key)).toEqual(keys.slice(1000));
      expect((await collect(store.list('from/', { startAfter: 'from/000002x' }))).map((o) => o.key)).toEqual(keys.slice(3));
      expect((await collect(store.list('from/', { startAfter: 'from/' }))).length).toBe(1050);
      expect((await collect(store.list('from/', { limit: 2 }))).map((o) => o.key)).toEqual(keys.slice(0, 2));
      expect((await collect(store.list('from/', { startAfter: 'from/000010', limit: 3 }))).map((o) => o.key)).toEqual(keys.slice(11, 14));
      expect(await collect(store.list('from/', { startAfter: 'from/999999' }))).toEqual([]);
    });

    it('overwrites without ifAbsent', async () => {
      await store.put('over', bytes('first version'));
      await store.put('over', bytes('second'));
      expect(Buffer.from(await store.get('over')).toString()).toBe('second');
      expect(await store.head('over')).toEqual({ key: 'over', size: 6 });
    });

    it('ifAbsent writes a new key and refuses an existing one (where the server supports it)', async () => {
      await store.put('once', bytes('original'), { ifAbsent: true });
      expect(Buffer.from(await store.get('once')).toString()).toBe('original');
      const second = store.put('once', bytes('replacement'), { ifAbsent: true });
      if (capabilities.conditionalWrites) {
        await expectStoreError(second, 'exists');
        expect(Buffer.from(await store.get('once')).toString()).toBe('original');
      } else {
        // The server may ignore the condition; it must then either succeed or say 'exists'.
        const error: unknown = await second.then(
          () => undefined,
          (e: unknown) => e,
        );
        if (error !== undefined) expect((error as StoreError).kind).toBe('exists');
      }
    });

    it('deletes, and deleting a missing key is fine', async () => {
      await store.put('gone', bytes('bye'));
      await store.delete('gone');
      await expectStoreError(store.get('gone'), 'not-found');
      expect(await store.head('gone')).toBeUndefined();
      await store.delete('gone');
      await store.delete('never/was/here');
      expect(await collect(store.list('gone'))).toEqual([]);
    });

    it('deletes a batch of up to 1000 keys at once, missing ones included; a larger batch is refused', async () => {
      const keys = Array.from({ length: 1000 }, (_, i) => `batch/${String(i).padStart(4, '0')}`);
      for (const key of keys.slice(0, 30)) await store.put(key, bytes(key));
      // A key that stays in the same "directory": s3rver deletes a batch's keys concurrently and
      // races removing a directory they empty (a 500), which real servers do not.
      await store.put('batch/kept', bytes('kept'));
      await store.deleteMany(keys);
      expect(await collect(store.list('batch/'))).toEqual([{ key: 'batch/kept', size: 4 }]);
      await store.deleteMany([]);
      await expect(store.deleteMany([...keys, 'one-more'])).rejects.toThrow(/at most 1000 keys, got 1001/);
      await store.delete('batch/kept');
    });

    it('handles keys with nested slashes', async () => {
      const key = 'packs/ab/cd/ef/0123456789abcdef';
      await store.put(key, bytes('nested'));
      expect(Buffer.from(await store.get(key)).toString()).toBe('nested');
      expect(await collect(store.list('packs/ab/'))).toEqual([{ key, size: 6 }]);
      await store.delete(key);
      expect(await collect(store.list('packs/'))).toEqual([]);
    });

    it('stops before starting an operation when the signal has fired', async () => {
      const controller = new AbortController();
      controller.abort();
      const signal = controller.signal;
      await expect(store.put('aborted', bytes('x'), { signal })).rejects.toMatchObject({ code: 'ABORTED' });
      await expect(store.get('aborted', { signal })).rejects.toMatchObject({ code: 'ABORTED' });
      expect(await store.head('aborted')).toBeUndefined();
    });

    it('without Object Lock: says why, refuses a put under retention (or stores it without one), and lists each object as its only version', async () => {
      const state = await store.objectLock();
      expect(state.enabled).toBe(false);
      expect(state.enabled === false && state.why).toMatch(/Object Lock/);
      const put = store.put('locked', bytes('x'), { retention: { mode: 'governance', until: Date.now() + 60_000 } });
      if (capabilities.retentionWithoutLock === 'refused') {
        await expect(put).rejects.toBeInstanceOf(StoreError);
        expect(await store.head('locked')).toBeUndefined();
      } else {
        await put;
        expect((await store.head('locked'))?.retention).toBeUndefined();
      }
      if (!capabilities.listVersions) return;
      await store.put('v/a', bytes('a'));
      await store.put('v/b', bytes('bb'));
      const listed = [];
      for await (const v of store.listVersions('v/')) listed.push({ key: v.key, latest: v.latest, deleteMarker: v.deleteMarker, size: v.size });
      expect(listed).toEqual([
        { key: 'v/a', latest: true, deleteMarker: false, size: 1 },
        { key: 'v/b', latest: true, deleteMarker: false, size: 2 },
      ]);
    });
  });
}
