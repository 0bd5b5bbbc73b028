// The bytes a connection has received and not yet parsed, kept as the chunks the socket delivered.
// A message is taken out only once all of it is here: as a view of one chunk when it lies inside
// that chunk (most headers, small writes), otherwise copied once into a buffer of its own size.
// Nothing is concatenated per chunk, so parsing costs one copy of each spanning message at most.
//
// A chunk may have an owner (the receive slab it is a view of, receive-slabs.ts): the queue holds
// one reference per chunk and lets go once the chunk is consumed. So a view from take() is only
// good until the current read callback returns; a caller that keeps payload bytes longer takes
// them with takeViews(n, holds), which references their owners for it.

import type { ChunkOwner } from './receive-slabs.js';

export class ByteQueue {
  #chunks: Buffer[] = [];
  #owners: (ChunkOwner | undefined)[] = [];
  /** Offset of the first unread byte in #chunks[0]. */
  #head = 0;
  #length = 0;

  /** Bytes queued. */
  get length(): number {
    return this.#length;
  }

  /** Appends a chunk; with an owner, the queue takes over one reference to it (even if empty). */
  push(chunk: Buffer, owner?: ChunkOwner): void {
    if (chunk.length === 0) {
      owner?.unref();
      return;
    }
    this.#chunks.push(chunk);
    this.#owners.push(owner);
    this.#length += chunk.length;
  }

  /** Removes and returns the next `n` bytes (n ≤ length). */
  take(n: number): Buffer {
    if (n > this.#length) throw new RangeError(`cannot take ${n} bytes from a queue of ${this.#length}`);
    if (n === 0) return Buffer.alloc(0);
    const first = this.#chunks[0]!;
    const available = first.length - this.#head;
    if (n <= available) {
      const view = first.subarray(this.#head, this.#head + n);
      this.#consume(n, available);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.#chunks[0]!;
      const here = Math.min(chunk.length - this.#head, n - filled);
      chunk.copy(out, filled, this.#head, this.#head + here);
      filled += here;
      this.#consume(here, chunk.length - this.#head);
    }
    return out;
  }

  /**
   * Removes the next `n` bytes as views of the chunks they lie in (no copy). With `holds`, each
   * view's owner is referenced and appended there; the caller unrefs them when done with the views.
   */
  takeViews(n: number, holds?: ChunkOwner[]): Buffer[] {
    if (n > this.#length) throw new RangeError(`cannot take ${n} bytes from a queue of ${this.#length}`);
    const views: Buffer[] = [];
    let taken = 0;
    while (taken < n) {
      const chunk = this.#chunks[0]!;
      const owner = this.#owners[0];
      const available = chunk.length - this.#head;
      const here = Math.min(available, n - taken);
      views.push(chunk.subarray(this.#head, this.#head + here));
      if (holds !== undefined && owner !== undefined) {
        owner.ref();
        holds.push(owner);
      }
      taken += here;
      this.#consume(here, available);
    }
    return views;
  }

  /** Discards up to `n` bytes; returns how many were discarded. */
  skip(n: number): number {
    let skipped = 0;
    while (skipped < n && this.#chunks.length > 0) {
      const available = this.#chunks[0]!.length - this.#head;
      const here = Math.min(available, n - skipped);
      this.#consume(here, available);
      skipped += here;
    }
    return skipped;
  }

  /** Drops everything queued (and the references to its owners). */
  clear(): void {
    const owners = this.#owners;
    this.#chunks = [];
    this.#owners = [];
    this.#head = 0;
    this.#length = 0;
    for (const owner of owners) owner?.unref();
  }

  #consume(n: number, availableInFirst: number): void {
    this.#length -= n;
    if (n === availableInFirst) {
      this.#chunks.shift();
      this.#owners.shift()?.unref();
      this.#head = 0;
    } else {
      this.#head += n;
    }
  }
}
