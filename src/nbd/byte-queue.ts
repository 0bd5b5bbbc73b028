// The bytes a connection has received and not yet parsed, kept as the chunks the socket delivered.
// A message is taken out only once all of it is here: as a view of one chunk when it lies inside
// that chunk (most headers, small writes), otherwise copied once into a buffer of its own size.
// Nothing is concatenated per chunk, so parsing costs one copy of each spanning message at most.

export class ByteQueue {
  #chunks: Buffer[] = [];
  /** Offset of the first unread byte in #chunks[0]. */
  #head = 0;
  #length = 0;

  /** Bytes queued. */
  get length(): number {
    return this.#length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
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

  /** Removes the next `n` bytes as views of the chunks they lie in (no copy). */
  takeViews(n: number): Buffer[] {
    if (n > this.#length) throw new RangeError(`cannot take ${n} bytes from a queue of ${this.#length}`);
    const views: Buffer[] = [];
    let taken = 0;
    while (taken < n) {
      const chunk = this.#chunks[0]!;
      const available = chunk.length - this.#head;
      const here = Math.min(available, n - taken);
      views.push(chunk.subarray(this.#head, this.#head + here));
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

  clear(): void {
    this.#chunks = [];
    this.#head = 0;
    this.#length = 0;
  }

  #consume(n: number, availableInFirst: number): void {
    this.#length -= n;
    if (n === availableInFirst) {
      this.#chunks.shift();
      this.#head = 0;
    } else {
      this.#head += n;
    }
  }
}
