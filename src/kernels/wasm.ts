// Typed wrappers around the AssemblyScript SIMD kernels (assembly/index.ts).
//
// An operand that already lives in WASM memory (a KernelBuffer's view, or any subarray of one)
// is passed by pointer with no copy. Any other Uint8Array is staged through fixed scratch
// buffers one chunk at a time, so inputs of any size work and memory never grows during a
// kernel call (growth would detach the caller's views).

import { InvalidArgumentError } from '../errors.js';
import { WasmHeap } from './heap.js';
import type { KernelBuffer, Kernels } from './types.js';

export interface KernelExports {
  memory: WebAssembly.Memory;
  heapBase(): number;
  bitsOr(dst: number, src: number, len: number): void;
  bitsAnd(dst: number, src: number, len: number): void;
  bitsAndNot(dst: number, src: number, len: number): void;
  bitsXor(dst: number, src: number, len: number): void;
  popcount(ptr: number, len: number): number;
  isZero(ptr: number, len: number): number;
  firstDifference(a: number, b: number, len: number): number;
  extractSetBits(bits: number, bitCount: number, start: number, out: number, cap: number, indexBase: number): number;
}

/** Bytes staged per kernel call for operands outside WASM memory; a multiple of 16. */
export const DEFAULT_CHUNK_BYTES = 1024 * 1024;

type BinaryKernel = (dst: number, src: number, len: number) => void;

class WasmBuffer implements KernelBuffer {
  private ptr: number;
  private view: Uint8Array | undefined;
  readonly byteLength: number;

  constructor(
    private readonly heap: WasmHeap,
    private readonly memory: WebAssembly.Memory,
    byteLength: number,
  ) {
    this.byteLength = byteLength;
    this.ptr = heap.alloc(byteLength);
  }

  bytes(): Uint8Array {
    if (this.ptr < 0) throw new InvalidArgumentError('kernel buffer used after free()');
    if (this.view === undefined || this.view.buffer !== this.memory.buffer) {
      this.view = new Uint8Array(this.memory.buffer, this.ptr, this.byteLength);
    }
    return this.view;
  }

  free(): void {
    if (this.ptr < 0) return;
    this.heap.release(this.ptr);
    this.ptr = -1;
    this.view = undefined;
  }
}

export class WasmKernels implements Kernels {
  readonly name = 'wasm' as const;
  readonly heap: WasmHeap;
  private readonly exports: KernelExports;
  private readonly chunk: number;
  private readonly scratch: [number, number];

  constructor(exports: KernelExports, chunkBytes = DEFAULT_CHUNK_BYTES) {
    if (chunkBytes <= 0 || chunkBytes % 16 !== 0) {
      throw new InvalidArgumentError(`kernel chunk size must be a positive multiple of 16, got ${chunkBytes}`);
    }
    this.exports = exports;
    this.chunk = chunkBytes;
    this.heap = new WasmHeap(exports.memory, exports.heapBase());
    this.scratch = [this.heap.alloc(chunkBytes), this.heap.alloc(chunkBytes)];
  }

  alloc(byteLength: number): KernelBuffer {
    return new WasmBuffer(this.heap, this.exports.memory, byteLength);
  }

  or(dst: Uint8Array, src: Uint8Array): void {
    this.binary(dst, src, 'or', this.exports.bitsOr);
  }

  and(dst: Uint8Array, src: Uint8Array): void {
    this.binary(dst, src, 'and', this.exports.bitsAnd);
  }

  andNot(dst: Uint8Array, src: Uint8Array): void {
    this.binary(dst, src, 'andNot', this.exports.bitsAndNot);
  }

  xor(dst: Uint8Array, src: Uint8Array): void {
    this.binary(dst, src, 'xor', this.exports.bitsXor);
  }

  popcount(bytes: Uint8Array): number {
    let total = 0;
    this.eachChunk(bytes.length, (from, len) => {
      total += this.exports.popcount(this.input(bytes, from, len, 0), len) >>> 0;
      return true;
    });
    return total;
  }

  isZero(bytes: Uint8Array): boolean {
    let zero = true;
    this.eachChunk(bytes.length, (from, len) => {
      zero = this.exports.isZero(this.input(bytes, from, len, 0), len) !== 0;
      return zero;
    });
    return zero;
  }

  firstDifference(a: Uint8Array, b: Uint8Array): number {
    sameLength(a, b, 'firstDifference');
    let found = -1;
    this.eachChunk(a.length, (from, len) => {
      const at = this.exports.firstDifference(this.input(a, from, len, 0), this.input(b, from, len, 1), len);
      if (at >= 0) found = from + at;
      return at < 0;
    });
    return found;
  }

  extractSetBits(bits: Uint8Array, bitCount: number, start: number, out: Uint32Array): number {
    if (!Number.isInteger(bitCount) || bitCount < 0 || bitCount >= 2 ** 32) {
      throw new InvalidArgumentError(`extractSetBits: bitCount must be an integer in [0, 2^32), got ${bitCount}`);
    }
    if (bits.length < Math.ceil(bitCount / 8)) {
      throw new InvalidArgumentError(`extractSetBits: ${bitCount} bits need ${Math.ceil(bitCount / 8)} bytes, got ${bits.length}`);
    }
    if (out.length === 0) return 0;
    const outInWasm = out.buffer === this.exports.memory.buffer;
    const bitsPerChunk = this.chunk * 8;
    let written = 0;
    let pos = start;
    while (pos < bitCount && written < out.length) {
      const chunkStart = Math.floor(pos / bitsPerChunk) * bitsPerChunk;
      const chunkBits = Math.min(bitsPerChunk, bitCount - chunkStart);
      const bitsPtr = this.input(bits, chunkStart / 8, Math.ceil(chunkBits / 8), 0);
      const room = out.length - written;
      const cap = outInWasm ? room : Math.min(room, this.chunk / 4);
      const outPtr = outInWasm ? out.byteOffset + written * 4 : this.scratch[1];
      const n = this.exports.extractSetBits(bitsPtr, chunkBits, pos - chunkStart, outPtr, cap, chunkStart) >>> 0;
      if (!outInWasm) out.set(new Uint32Array(this.exports.memory.buffer, outPtr, n), written);
      written += n;
      // A full output may have stopped mid-chunk: resume after the last index written.
      pos = n === cap ? out[written - 1]! + 1 : chunkStart + chunkBits;
    }
    return written;
  }

  private binary(dst: Uint8Array, src: Uint8Array, op: string, kernel: BinaryKernel): void {
    sameLength(dst, src, op);
    const dstInWasm = dst.buffer === this.exports.memory.buffer;
    this.eachChunk(dst.length, (from, len) => {
      const d = this.input(dst, from, len, 0);
      kernel(d, this.input(src, from, len, 1), len);
      if (!dstInWasm) dst.set(new Uint8Array(this.exports.memory.buffer, d, len), from);
      return true;
    });
  }

  /** Calls step(from, len) over [0, total) in chunks while it returns true. */
  private eachChunk(total: number, step: (from: number, len: number) => boolean): void {
    // Operands in WASM memory need no staging, but chunking keeps popcount's u32 total safe.
    for (let from = 0; from < total; from += this.chunk) {
      if (!step(from, Math.min(this.chunk, total - from))) return;
    }
  }

  /** Pointer to bytes [from, from + len) of a, staging them into scratch slot `slot` if needed. */
  private input(a: Uint8Array, from: number, len: number, slot: 0 | 1): number {
    if (a.buffer === this.exports.memory.buffer) return a.byteOffset + from;
    const ptr = this.scratch[slot];
    new Uint8Array(this.exports.memory.buffer, ptr, len).set(a.subarray(from, from + len));
    return ptr;
  }
}

function sameLength(a: Uint8Array, b: Uint8Array, op: string): void {
  if (a.length !== b.length) {
    throw new InvalidArgumentError(`${op}: operands differ in length (${a.length} and ${b.length} bytes)`);
  }
}
