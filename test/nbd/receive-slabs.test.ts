// Receive slabs: reads fill a slab front to back, a slab comes back to the pool only when its
// last holder lets go, and the ByteQueue holds and releases chunk owners as bytes are parsed.

import { describe, expect, it } from 'vitest';
import { ByteQueue } from '../../src/nbd/byte-queue.js';
import { MIN_READ_BYTES, SlabPool, SlabReader, type ChunkOwner } from '../../src/nbd/receive-slabs.js';

const KiB = 1024;

describe('SlabPool and SlabReader', () => {
  it('fills one slab with successive reads and retires it when less than a read is left', () => {
    const pool = new SlabPool(1024 * KiB, 256 * KiB);
    const reader = new SlabReader(pool);
    const first = reader.target();
    expect(first.length).toBe(256 * KiB);
    const a = reader.received(100 * KiB);
    const second = reader.target();
    expect(second.length).toBe(156 * KiB);
    expect(second.buffer).toBe(first.buffer);
    expect(second.byteOffset).toBe(first.byteOffset + 100 * KiB);
    const b = reader.received(100 * KiB);
    expect(b.owner).toBe(a.owner);
    expect(b.chunk.byteOffset).toBe(a.chunk.byteOffset + 100 * KiB);
    // 56 KiB left is less than MIN_READ_BYTES: the next read gets a fresh slab.
    expect(256 * KiB - 200 * KiB).toBeLessThan(MIN_READ_BYTES);
    const third = reader.target();
    expect(third.length).toBe(256 * KiB);
    expect(third.buffer).not.toBe(first.buffer);
    expect(pool.bytesInUse).toBe(512 * KiB); // the old slab is still held by its two chunks
    a.owner.unref();
    expect(pool.bytesInUse).toBe(512 * KiB);
    b.owner.unref();
    expect(pool.bytesInUse).toBe(256 * KiB);
    expect(pool.idleSlabs).toBe(1);
    reader.close();
    expect(pool.bytesInUse).toBe(0);
    expect(pool.idleSlabs).toBe(2);
  });

  it('reads into small slabs while reads are short, so an idle connection holds 64 KiB, not a large slab', () => {
    const big = new SlabPool(4096 * KiB, 1024 * KiB);
    const small = new SlabPool(1024 * KiB, MIN_READ_BYTES);
    const reader = new SlabReader(big, small);
    expect(reader.target().length).toBe(MIN_READ_BYTES); // the handshake: small
    reader.received(100).owner.unref();
    expect(reader.target().length).toBe(MIN_READ_BYTES);
    const bulkTarget = reader.received(40 * KiB); // a full read: bulk traffic
    bulkTarget.owner.unref();
    expect(reader.target().length).toBe(1024 * KiB);
    const bulk = reader.received(300 * KiB);
    expect(reader.target().length).toBe(724 * KiB); // the same large slab goes on filling
    const trickle = reader.received(2 * KiB); // traffic stops: the next read goes small again
    expect(reader.target().length).toBe(MIN_READ_BYTES);
    expect(big.bytesInUse).toBe(1024 * KiB); // the large slab lives on only for its chunks
    bulk.owner.unref();
    trickle.owner.unref();
    expect(big.bytesInUse).toBe(0);
    expect(small.bytesInUse).toBe(MIN_READ_BYTES);
    reader.close();
    expect(small.bytesInUse).toBe(0);
  });

  it('reuses idle slabs, keeps at most maxIdleBytes of them, and refuses a double release', () => {
    const pool = new SlabPool(128 * KiB, 64 * KiB);
    const slabs = [pool.acquire(), pool.acquire(), pool.acquire()];
    for (const slab of slabs) slab.unref();
    expect(pool.idleSlabs).toBe(2);
    expect(pool.bytesInUse).toBe(0);
    const again = pool.acquire();
    expect(slabs.slice(0, 2)).toContain(again);
    again.unref();
    expect(() => again.unref()).toThrow(/released more often/);
  });

  it('hands out scratch room after close, and refuses received() then', () => {
    const pool = new SlabPool(1024 * KiB, 64 * KiB);
    const reader = new SlabReader(pool);
    reader.target();
    reader.close();
    expect(reader.target().length).toBe(MIN_READ_BYTES);
    expect(pool.bytesInUse).toBe(0);
    expect(() => reader.received(1)).toThrow();
  });

  it('refuses slabs smaller than one read', () => {
    expect(() => new SlabPool(1024 * KiB, MIN_READ_BYTES - 1)).toThrow(RangeError);
  });
});

class CountingOwner implements ChunkOwner {
  readonly byteLength = 4;
  refs = 1;
  ref(): void {
    this.refs += 1;
  }
  unref(): void {
    if (this.refs === 0) throw new Error('over-released');
    this.refs -= 1;
  }
}

describe('ByteQueue with chunk owners', () => {
  it('lets go of a chunk once it is consumed, by take, skip or clear', () => {
    const q = new ByteQueue();
    const [a, b, c] = [new CountingOwner(), new CountingOwner(), new CountingOwner()];
    q.push(Buffer.from('abcd'), a);
    q.push(Buffer.from('efgh'), b);
    q.push(Buffer.from('ijkl'), c);
    expect(q.take(3).toString()).toBe('abc');
    expect(a.refs).toBe(1);
    expect(q.take(3).toString()).toBe('def'); // spans: copied, and a is done
    expect(a.refs).toBe(0);
    expect(b.refs).toBe(1);
    expect(q.skip(3)).toBe(3);
    expect(b.refs).toBe(0);
    q.clear();
    expect(c.refs).toBe(0);
  });

  it('takeViews with holds references each piece it hands out', () => {
    const q = new ByteQueue();
    const [a, b] = [new CountingOwner(), new CountingOwner()];
    q.push(Buffer.from('abcd'), a);
    q.push(Buffer.from('efgh'), b);
    const holds: ChunkOwner[] = [];
    const views = q.takeViews(6, holds);
    expect(views.map(String)).toEqual(['abcd', 'ef']);
    expect(holds).toEqual([a, b]);
    expect(a.refs).toBe(1); // the queue let go, the hold remains
    expect(b.refs).toBe(2); // the queue still has 'gh'
    for (const owner of holds) owner.unref();
    q.clear();
    expect([a.refs, b.refs]).toEqual([0, 0]);
  });

  it('an empty chunk is released at once', () => {
    const q = new ByteQueue();
    const a = new CountingOwner();
    q.push(Buffer.alloc(0), a);
    expect(a.refs).toBe(0);
    expect(q.length).toBe(0);
  });
});
