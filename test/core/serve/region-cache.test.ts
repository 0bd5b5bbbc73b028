// serve's cache of verified regions on its own: LRU eviction by the memory of the buffers behind
// the entries, and a buffer recycled for a later GET only once nothing uses it, from the next
// macrotask on.

import { describe, expect, it } from 'vitest';
import { RegionCache } from '../../../src/core/serve/region-cache.js';
import { turns } from '../../helpers/wait.js';

const R = 4096; // a region: the smallest buffer size class

describe('RegionCache', () => {
  it('evicts the least recently used entries beyond its capacity, counting a buffer behind several entries once', () => {
    const cache = new RegionCache(3 * R, 1024 * 1024);
    const pair = cache.takeBuffer(2 * R);
    cache.remember('a', pair.subarray(0, R));
    cache.remember('b', pair.subarray(R, 2 * R));
    expect(cache.cachedBytes).toBe(2 * R);
    cache.remember('c', cache.takeBuffer(R));
    expect(cache.cachedBytes).toBe(3 * R);
    cache.get('a'); // now the most recent: its buffer stays
    cache.remember('d', cache.takeBuffer(R));
    // b went first (its buffer still backs a), then c.
    expect(['a', 'b', 'c', 'd'].filter((id) => cache.has(id))).toEqual(['a', 'd']);
    expect(cache.cachedBytes).toBe(3 * R);
    // Larger than the whole cache: not kept.
    cache.remember('e', cache.takeBuffer(4 * R));
    expect(cache.has('e')).toBe(false);
    cache.close();
  });

  it('recycles a buffer no entry uses only from the next macrotask on, and never while a reply pins it', async () => {
    const cache = new RegionCache(R, 1024 * 1024);
    const first = cache.takeBuffer(R);
    cache.remember('a', first);
    cache.pin(first.buffer);
    cache.remember('b', cache.takeBuffer(R)); // evicts a; its buffer is pinned
    await turns(1);
    expect(cache.takeBuffer(R).buffer).not.toBe(first.buffer);
    cache.unpin(first.buffer);
    // Within this turn a read resumed with a view of it may still be taking its bytes.
    expect(cache.takeBuffer(R).buffer).not.toBe(first.buffer);
    expect(cache.fetchBuffersReused).toBe(0);
    await turns(1);
    expect(cache.takeBuffer(R).buffer).toBe(first.buffer);
    expect(cache.fetchBuffersReused).toBe(1);
    cache.close();
  });

  it('does not recycle a buffer an entry took back before the macrotask came', async () => {
    const cache = new RegionCache(2 * R, 1024 * 1024);
    const pair = cache.takeBuffer(2 * R);
    cache.remember('a', pair.subarray(0, R));
    cache.remember('x', cache.takeBuffer(2 * R)); // evicts a: pair is retired
    cache.remember('b', pair.subarray(R, 2 * R)); // evicts x, and pair backs an entry again
    await turns(1);
    expect(cache.takeBuffer(2 * R).buffer).not.toBe(pair.buffer);
    expect(cache.has('b')).toBe(true);
    cache.close();
  });
});
