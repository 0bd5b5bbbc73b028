// BufferPool: exact-length views over recycled power-of-two buffers, with a cap on idle bytes.

import { describe, expect, it } from 'vitest';
import { BufferPool } from '../../src/nbd/buffer-pool.js';

describe('BufferPool', () => {
  it('hands out exact lengths over size classes and reuses what comes back', () => {
    const pool = new BufferPool(1024 * 1024);
    const a = pool.acquire(5000);
    expect(a.length).toBe(5000);
    expect(a.buffer.byteLength).toBe(8192);
    pool.release(a);
    expect(pool.idleBytes).toBe(8192);
    const b = pool.acquire(8000); // same class
    expect(b.buffer).toBe(a.buffer);
    expect(pool.idleBytes).toBe(0);
    const c = pool.acquire(1); // smallest class
    expect(c.buffer.byteLength).toBe(4096);
    expect(pool.acquire(8192).buffer).not.toBe(b.buffer); // b is still out
  });

  it('keeps at most maxIdleBytes idle and ignores buffers it did not make', () => {
    const pool = new BufferPool(64 * 1024);
    const held = [pool.acquire(32 * 1024), pool.acquire(32 * 1024), pool.acquire(32 * 1024)];
    for (const b of held) pool.release(b);
    expect(pool.idleBytes).toBe(64 * 1024);
    pool.release(Buffer.alloc(4096));
    pool.release(new Uint8Array(8192));
    expect(pool.idleBytes).toBe(64 * 1024);
  });

  it('adopts buffers of a size class it did not make, and never keeps one twice', () => {
    const pool = new BufferPool(1024 * 1024);
    const foreign = new ArrayBuffer(16 * 1024);
    pool.adopt(foreign);
    pool.adopt(new ArrayBuffer(5000)); // not a size class: ignored
    expect(pool.idleBytes).toBe(16 * 1024);
    pool.adopt(foreign); // already idle
    pool.release(new Uint8Array(foreign));
    expect(pool.idleBytes).toBe(16 * 1024);
    const a = pool.acquire(10_000);
    expect(a.buffer).toBe(foreign);
    expect(pool.acquire(10_000).buffer).not.toBe(foreign);
    pool.release(a);
    expect(pool.idleBytes).toBe(16 * 1024);
  });
});
