// A first-fit allocator over the WASM module's linear memory, from the module's heap base up.
// The module itself never allocates (runtime "stub"), so this is the only owner of that memory.
// Blocks are 16-byte aligned so SIMD loads of whole blocks stay inside them.

import { InvalidArgumentError } from '../errors.js';

const ALIGN = 16;
const PAGE = 65536;
const MAX_BYTES = 4 * 1024 * 1024 * 1024; // wasm32 address space

interface FreeBlock {
  ptr: number;
  size: number;
}

export class WasmHeap {
  private readonly memory: WebAssembly.Memory;
  private top: number;
  /** Highest address ever handed out; memory above it is still as WASM made it: zero. */
  private highWater: number;
  /** Free blocks below `top`, sorted by address, never adjacent (they are merged). */
  private readonly free: FreeBlock[] = [];
  private readonly sizes = new Map<number, number>();

  constructor(memory: WebAssembly.Memory, base: number) {
    this.memory = memory;
    this.top = align(base);
    this.highWater = this.top;
  }

  /** End of the highest block handed out so far (memory above it was never used). */
  get highWaterMark(): number {
    return this.highWater;
  }

  /** Bytes handed out and not yet released. */
  get usedBytes(): number {
    let used = 0;
    for (const size of this.sizes.values()) used += size;
    return used;
  }

  /** Reserves byteLength zeroed bytes; may grow memory, which detaches every existing view. */
  alloc(byteLength: number): number {
    if (!Number.isSafeInteger(byteLength) || byteLength < 0) {
      throw new InvalidArgumentError(`kernel alloc: length must be a non-negative integer, got ${byteLength}`);
    }
    const size = Math.max(ALIGN, align(byteLength));
    let ptr = -1;
    for (let i = 0; i < this.free.length; i++) {
      const block = this.free[i]!;
      if (block.size < size) continue;
      ptr = block.ptr;
      if (block.size === size) this.free.splice(i, 1);
      else {
        block.ptr += size;
        block.size -= size;
      }
      break;
    }
    if (ptr < 0) {
      ptr = this.top;
      this.ensure(ptr + size);
      this.top = ptr + size;
    }
    this.sizes.set(ptr, size);
    const dirtyEnd = Math.min(ptr + size, this.highWater);
    if (dirtyEnd > ptr) new Uint8Array(this.memory.buffer, ptr, dirtyEnd - ptr).fill(0);
    this.highWater = Math.max(this.highWater, ptr + size);
    return ptr;
  }

  release(ptr: number): void {
    const size = this.sizes.get(ptr);
    if (size === undefined) throw new InvalidArgumentError(`kernel free: ${ptr} is not an allocated block`);
    this.sizes.delete(ptr);
    let i = 0;
    while (i < this.free.length && this.free[i]!.ptr < ptr) i++;
    this.free.splice(i, 0, { ptr, size });
    // Merge with the next block, then with the previous one.
    const next = this.free[i + 1];
    if (next !== undefined && ptr + size === next.ptr) {
      this.free[i]!.size += next.size;
      this.free.splice(i + 1, 1);
    }
    const prev = this.free[i - 1];
    if (prev !== undefined && prev.ptr + prev.size === ptr) {
      prev.size += this.free[i]!.size;
      this.free.splice(i, 1);
      i--;
    }
    // A free block at the top goes back to the bump area.
    const last = this.free[this.free.length - 1];
    if (last !== undefined && last.ptr + last.size === this.top) {
      this.top = last.ptr;
      this.free.pop();
    }
  }

  private ensure(end: number): void {
    if (end > MAX_BYTES) {
      throw new InvalidArgumentError(`kernel memory: ${end} bytes exceed the 4 GiB WASM address space`);
    }
    const have = this.memory.buffer.byteLength;
    if (end > have) this.memory.grow(Math.ceil((end - have) / PAGE));
  }
}

function align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}
