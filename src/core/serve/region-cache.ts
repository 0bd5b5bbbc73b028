// serve's cache of verified regions and the fetch buffers under it.
//
// Entries are keyed by stored location (deduplicated regions share one) and are views of the
// buffers GETs read into: a GET of several regions leaves one buffer behind several entries, and
// its memory is counted once, for as long as any of them is cached. Replies sent straight from
// these buffers (readViews) pin them. A buffer no entry and no pin uses any more is recycled for
// a later GET (a fresh buffer per GET costs page faults on every byte: ~12% of serve's CPU,
// measured), but only from the next macrotask on: a read whose fetch just settled takes its
// bytes in the reaction it registered, within the current microtask checkpoint.

import { BufferPool } from '../../nbd/buffer-pool.js';

export class RegionCache {
  /** GETs that read into a buffer the cache gave back (instead of a new one). */
  fetchBuffersReused = 0;
  /** Verified regions by stored location, least recently used first. */
  private readonly entries = new Map<string, Uint8Array>();
  /** Buffers the entries are views of, with how many: memory is counted per buffer. */
  private readonly backing = new Map<ArrayBufferLike, number>();
  private heldBytes = 0;
  /** Buffers replies are still being sent from, with how many. */
  private readonly pins = new Map<ArrayBufferLike, number>();
  /** Buffers nothing uses any more: spare once pending continuations have run. */
  private readonly retired = new Set<ArrayBufferLike>();
  private retiring: NodeJS.Immediate | undefined;
  /** Buffers ready for the next GETs. */
  private readonly spare: BufferPool;
  private closed = false;

  /**
   * `capacityBytes` of buffers behind entries at most (0 caches nothing); `spareBytes` of idle
   * buffers kept for GETs (what the read-ahead window and the GETs in flight can use).
   */
  constructor(
    private readonly capacityBytes: number,
    spareBytes: number,
  ) {
    this.spare = new BufferPool(spareBytes);
  }

  /** Bytes of the buffers behind the entries. */
  get cachedBytes(): number {
    return this.heldBytes;
  }

  has(id: string): boolean {
    return this.entries.has(id);
  }

  /** The region's bytes, now the most recently used, if cached. */
  get(id: string): Uint8Array | undefined {
    const bytes = this.entries.get(id);
    if (bytes !== undefined) {
      this.entries.delete(id);
      this.entries.set(id, bytes);
    }
    return bytes;
  }

  /** Caches a verified region (a view of a GET's buffer); evicts the least recently used beyond capacity. */
  remember(id: string, bytes: Uint8Array): void {
    if (this.closed || bytes.buffer.byteLength > this.capacityBytes || this.entries.has(id)) return;
    this.entries.set(id, bytes);
    const views = this.backing.get(bytes.buffer) ?? 0;
    this.backing.set(bytes.buffer, views + 1);
    if (views === 0) this.heldBytes += bytes.buffer.byteLength;
    for (const [oldest, old] of this.entries) {
      if (this.heldBytes <= this.capacityBytes) break;
      this.entries.delete(oldest);
      const left = this.backing.get(old.buffer)! - 1;
      if (left > 0) this.backing.set(old.buffer, left);
      else {
        this.backing.delete(old.buffer);
        this.heldBytes -= old.buffer.byteLength;
        if (!this.pins.has(old.buffer)) this.retire(old.buffer);
      }
    }
  }

  /** A buffer for a GET of `length` bytes: a spare one of its size class, or a new one. */
  takeBuffer(length: number): Uint8Array {
    const idle = this.spare.idleBytes;
    const buffer = this.spare.acquire(length);
    if (this.spare.idleBytes < idle) this.fetchBuffersReused++;
    return buffer;
  }

  /** Keeps a buffer a reply is sent from out of reuse until unpin(). */
  pin(buffer: ArrayBufferLike): void {
    this.pins.set(buffer, (this.pins.get(buffer) ?? 0) + 1);
  }

  unpin(buffer: ArrayBufferLike): void {
    const left = (this.pins.get(buffer) ?? 1) - 1;
    if (left > 0) {
      this.pins.set(buffer, left);
      return;
    }
    this.pins.delete(buffer);
    // Evicted (or never cached) while a reply was using it: it can be reused now.
    if (!this.backing.has(buffer) && !this.closed) this.retire(buffer);
  }

  close(): void {
    this.closed = true;
    if (this.retiring !== undefined) clearImmediate(this.retiring);
    this.entries.clear();
    this.backing.clear();
    this.retired.clear();
    this.heldBytes = 0;
  }

  /**
   * A buffer nothing uses: reused for a later GET, but only from the next macrotask on, when
   * every read resumed with a view of it has copied or pinned its bytes.
   */
  private retire(buffer: ArrayBufferLike): void {
    this.retired.add(buffer);
    this.retiring ??= setImmediate(() => {
      this.retiring = undefined;
      for (const retired of this.retired) {
        // Back in use since it was retired (a later region of its GET was cached, or a reply
        // pinned it): not spare after all.
        if (!this.backing.has(retired) && !this.pins.has(retired)) this.spare.adopt(retired as ArrayBuffer);
      }
      this.retired.clear();
    });
  }
}
