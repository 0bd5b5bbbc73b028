// ByteQueue: messages come out whole and in order however the socket split them.

import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { ByteQueue } from '../../src/nbd/byte-queue.js';
import { seededRandom } from '../../src/demo/sample-image.js';

describe('ByteQueue', () => {
  it('returns a view of the chunk when a message lies inside one', () => {
    const q = new ByteQueue();
    const chunk = Buffer.from('abcdefgh');
    q.push(chunk);
    const taken = q.take(3);
    expect(taken.toString()).toBe('abc');
    expect(taken.buffer).toBe(chunk.buffer);
    expect(q.length).toBe(5);
    expect(q.take(5).toString()).toBe('defgh');
    expect(q.length).toBe(0);
  });

  it('copies a message that spans chunks into one buffer', () => {
    const q = new ByteQueue();
    q.push(Buffer.from('ab'));
    q.push(Buffer.from(''));
    q.push(Buffer.from('cde'));
    q.push(Buffer.from('f'));
    expect(q.take(1).toString()).toBe('a');
    expect(q.take(5).toString()).toBe('bcdef');
    expect(q.length).toBe(0);
    expect(q.take(0).length).toBe(0);
  });

  it('skips across chunks and reports how much it skipped', () => {
    const q = new ByteQueue();
    q.push(Buffer.from('abc'));
    q.push(Buffer.from('defg'));
    expect(q.skip(5)).toBe(5);
    expect(q.take(2).toString()).toBe('fg');
    q.push(Buffer.from('xy'));
    expect(q.skip(10)).toBe(2);
    expect(q.length).toBe(0);
  });

  it('takeViews hands out the pieces without copying', () => {
    const q = new ByteQueue();
    const a = Buffer.from('abc');
    const b = Buffer.from('defgh');
    q.push(a);
    q.push(b);
    q.take(1);
    const views = q.takeViews(5);
    expect(views.map(String)).toEqual(['bc', 'def']);
    expect(views[0]!.buffer).toBe(a.buffer);
    expect(views[1]!.buffer).toBe(b.buffer);
    expect(q.take(2).toString()).toBe('gh');
    expect(() => q.takeViews(1)).toThrow(RangeError);
  });

  it('refuses to take more than it holds', () => {
    const q = new ByteQueue();
    q.push(Buffer.from('ab'));
    expect(() => q.take(3)).toThrow(RangeError);
  });

  it('reassembles a random stream cut at random places', () => {
    const rand = seededRandom(42);
    const stream = randomBytes(200_000);
    const q = new ByteQueue();
    const out: Buffer[] = [];
    let pushed = 0;
    while (pushed < stream.length || q.length > 0) {
      if (pushed < stream.length) {
        const n = Math.min(stream.length - pushed, 1 + Math.floor(rand() * 5000));
        q.push(stream.subarray(pushed, pushed + n));
        pushed += n;
      }
      const want = 1 + Math.floor(rand() * 7000);
      if (q.length >= want) out.push(Buffer.from(q.take(want)));
      else if (pushed === stream.length) out.push(Buffer.from(q.take(q.length)));
    }
    expect(Buffer.concat(out).equals(stream)).toBe(true);
  });
});
