// Recycled buffers for request payloads and reply data. Allocating a fresh 256 KiB buffer per
// request costs an allocation, page faults and garbage-collector pressure on every request; at
// NBD request rates that is a large share of the server's time. Buffers come in power-of-two
// size classes and each has its own ArrayBuffer, so a returned view identifies its buffer.
// Idle buffers are capped (`maxIdleBytes`); beyond that they are left to the garbage collector.
// A buffer the pool did not make can be adopted (serve's fetch buffers come back from worker
// threads as new ArrayBuffer objects); a buffer already idle is never taken twice.

const MIN_CLASS = 4096;

export class BufferPool {
  readonly #free = new Map<number, ArrayBuffer[]>();
  readonly #owned = new WeakSet<ArrayBuffer>();
  readonly #idle = new WeakSet<ArrayBuffer>();
  readonly #maxIdleBytes: number;
  #idleBytes = 0;

  constructor(maxIdleBytes: number) {
    this.#maxIdleBytes = maxIdleBytes;
  }

  /** Bytes held idle for reuse. */
  get idleBytes(): number {
    return this.#idleBytes;
  }

  /** A buffer of exactly `length` bytes (contents undefined), backed by a pooled allocation. */
  acquire(length: number): Buffer {
    const size = classOf(length);
    const list = this.#free.get(size);
    let backing = list?.pop();
    if (backing !== undefined) {
      this.#idleBytes -= size;
      this.#idle.delete(backing);
    } else {
      backing = Buffer.allocUnsafeSlow(size).buffer as ArrayBuffer;
      this.#owned.add(backing);
    }
    return Buffer.from(backing, 0, length);
  }

  /** Gives back a buffer from acquire(); nobody may use it afterwards. Others are ignored. */
  release(view: Uint8Array): void {
    const backing = view.buffer as ArrayBuffer;
    if (!this.#owned.has(backing) || this.#idle.has(backing)) return;
    const size = backing.byteLength;
    if (this.#idleBytes + size > this.#maxIdleBytes) return;
    let list = this.#free.get(size);
    if (list === undefined) this.#free.set(size, (list = []));
    list.push(backing);
    this.#idle.add(backing);
    this.#idleBytes += size;
  }

  /**
   * Takes in a buffer the pool did not make, as idle, if its size is a size class (else ignores
   * it); nobody may use it afterwards.
   */
  adopt(buffer: ArrayBuffer): void {
    if (buffer.byteLength !== classOf(buffer.byteLength)) return;
    this.#owned.add(buffer);
    this.release(new Uint8Array(buffer));
  }
}

function classOf(length: number): number {
  let size = MIN_CLASS;
  while (size < length) size *= 2;
  return size;
}
