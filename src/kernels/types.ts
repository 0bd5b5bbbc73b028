// The kernel interface. Two implementations: the WASM SIMD one (wasm.ts), used by default, and
// the plain-TypeScript reference (reference.ts), which defines what each kernel means and is
// what the differential tests hold the WASM against.
//
// Bitmaps use little-endian bit order: bit i is in byte i >> 3 at bit position i & 7.

/** Bytes that kernels can run on without copying (for WASM: inside its linear memory). */
export interface KernelBuffer {
  readonly byteLength: number;
  /**
   * A view of the bytes. Call again after anything that may allocate kernel memory: growth
   * replaces the underlying ArrayBuffer and old views then read as empty.
   */
  bytes(): Uint8Array;
  /** Returns the memory; the buffer and its views must not be used afterwards. */
  free(): void;
}

export interface Kernels {
  readonly name: 'wasm' | 'reference';

  /** dst |= src. Precondition: equal lengths. */
  or(dst: Uint8Array, src: Uint8Array): void;
  /** dst &= src. Precondition: equal lengths. */
  and(dst: Uint8Array, src: Uint8Array): void;
  /** dst &= ~src (set difference). Precondition: equal lengths. */
  andNot(dst: Uint8Array, src: Uint8Array): void;
  /** dst ^= src. Precondition: equal lengths. */
  xor(dst: Uint8Array, src: Uint8Array): void;

  /** Number of set bits in all bytes. */
  popcount(bytes: Uint8Array): number;
  /** True when every byte is zero (true for an empty array). */
  isZero(bytes: Uint8Array): boolean;
  /** Offset of the first byte where a and b differ, or -1 if equal. Precondition: equal lengths. */
  firstDifference(a: Uint8Array, b: Uint8Array): number;

  /**
   * Writes the indices of the set bits of `bits` in [start, bitCount), ascending, into `out`,
   * and returns how many it wrote. Bits at or past bitCount are ignored. When the return value
   * equals out.length there may be more: call again with start = out[out.length - 1] + 1.
   * Entries of out past the returned count may be overwritten.
   * Preconditions: bits.length >= ceil(bitCount / 8); 0 <= bitCount < 2^32; start >= 0.
   */
  extractSetBits(bits: Uint8Array, bitCount: number, start: number, out: Uint32Array): number;

  /** Allocates zeroed bytes the kernels run on in place (the engine reads regions into these). */
  alloc(byteLength: number): KernelBuffer;
}
