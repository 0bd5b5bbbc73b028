// Differential tests: every WASM kernel must agree with the plain-TypeScript reference on
// random inputs of awkward lengths, at offsets that are not 16-aligned, inside and outside
// WASM memory, and on inputs larger than the staging chunk.

import { afterEach, describe, expect, it } from 'vitest';
import { createWasmKernels, type KernelBuffer, type Kernels, referenceKernels } from '../../src/kernels/index.js';
import { seededRandom } from '../helpers/random.js';

const ref = referenceKernels;
// A tiny staging chunk makes every input above 4 KiB "larger than the arena".
const wasm = createWasmKernels(4096);
// Grow memory once up front: place() allocates, and growth in the middle of a case would
// detach the views made earlier in it.
wasm.alloc(128 * 1024 * 1024).free();

const LENGTHS = [0, 1, 15, 16, 17, 31, 63, 64, 65, 127, 1000, 4096, 4096 * 3 + 5, (1 << 20) + 3];
const OFFSETS = [0, 1, 3, 5, 16];
type Place = 'js' | 'wasm';
const PLACES: Place[] = ['js', 'wasm'];
type Fill = 'random' | 'sparse' | 'zero' | 'ones';
const FILLS: Fill[] = ['random', 'sparse', 'zero', 'ones'];

const rand = seededRandom(0x5eed);

function content(len: number, fill: Fill): Uint8Array {
  const bytes = new Uint8Array(len);
  if (fill === 'ones') bytes.fill(0xff);
  if (fill === 'random') for (let i = 0; i < len; i++) bytes[i] = rand() * 256;
  if (fill === 'sparse') for (let i = 0; i < len; i++) if (rand() < 0.01) bytes[i] = 1 << (rand() * 8);
  return bytes;
}

const placed: KernelBuffer[] = [];
afterEach(() => releasePlaced());

/** Frees what place() put in WASM memory; call at the end of each case. */
function releasePlaced(): void {
  for (const buffer of placed.splice(0)) buffer.free();
}

/** Copies `data` to a fresh array at byte offset `offset`, in JS memory or in WASM memory. */
function place(data: Uint8Array, offset: number, where: Place, k: Kernels = wasm): Uint8Array {
  if (where === 'js') {
    const backing = new Uint8Array(data.length + offset);
    const view = backing.subarray(offset);
    view.set(data);
    return view;
  }
  const buf = k.alloc(data.length + offset);
  placed.push(buf);
  const view = buf.bytes().subarray(offset);
  view.set(data);
  return view;
}

function* cases(): Generator<{ len: number; offset: number; where: Place; fill: Fill }> {
  for (const len of LENGTHS) {
    for (const offset of OFFSETS) {
      for (const where of PLACES) {
        for (const fill of FILLS) {
          if (len > 100_000 && (offset > 1 || fill === 'sparse')) continue; // keep the big ones few
          yield { len, offset, where, fill };
        }
      }
    }
  }
}

describe('binary bitmap kernels (or, and, andNot, xor)', () => {
  for (const op of ['or', 'and', 'andNot', 'xor'] as const) {
    it(`${op} matches the reference`, () => {
      for (const { len, offset, where, fill } of cases()) {
        const a = content(len, fill);
        const b = content(len, fill === 'zero' ? 'random' : fill);
        const expected = a.slice();
        ref[op](expected, b);
        const dst = place(a, offset, where);
        const src = place(b, (offset * 3) % 7, where === 'js' ? 'wasm' : 'js');
        wasm[op](dst, src);
        expect(Buffer.from(dst).equals(Buffer.from(expected)), `${op} len=${len} off=${offset} ${where} ${fill}`).toBe(true);
        releasePlaced();
      }
    });
  }

  it('reference computes the truth byte by byte', () => {
    const a = content(77, 'random');
    const b = content(77, 'random');
    const cases: Array<['or' | 'and' | 'andNot' | 'xor', (x: number, y: number) => number]> = [
      ['or', (x, y) => x | y],
      ['and', (x, y) => x & y],
      ['andNot', (x, y) => x & ~y & 0xff],
      ['xor', (x, y) => x ^ y],
    ];
    for (const [op, f] of cases) {
      for (const offset of [0, 1, 2, 3]) {
        const dst = place(a, offset, 'js');
        ref[op](dst, place(b, 3 - offset, 'js'));
        expect(Array.from(dst)).toEqual(Array.from(a, (x, i) => f(x, b[i]!)));
      }
    }
  });

  it('refuses operands of different lengths', () => {
    expect(() => wasm.or(new Uint8Array(3), new Uint8Array(4))).toThrow(/differ in length/);
    expect(() => ref.xor(new Uint8Array(3), new Uint8Array(4))).toThrow(/differ in length/);
  });
});

describe('popcount and isZero', () => {
  it('popcount matches the reference and a naive count', () => {
    for (const { len, offset, where, fill } of cases()) {
      const data = content(len, fill);
      const expected = ref.popcount(data);
      expect(wasm.popcount(place(data, offset, where)), `len=${len} off=${offset} ${where} ${fill}`).toBe(expected);
      expect(ref.popcount(place(data, offset, 'js'))).toBe(expected);
      releasePlaced();
      if (len < 5000) {
        let naive = 0;
        for (const byte of data) for (let bit = 0; bit < 8; bit++) naive += (byte >> bit) & 1;
        expect(expected).toBe(naive);
      }
    }
  });

  it('isZero finds a single non-zero byte anywhere, including the last', () => {
    for (const len of LENGTHS) {
      for (const offset of OFFSETS) {
        for (const where of PLACES) {
          const zero = new Uint8Array(len);
          expect(wasm.isZero(place(zero, offset, where))).toBe(true);
          expect(ref.isZero(place(zero, offset, 'js'))).toBe(true);
          if (len === 0) continue;
          for (const at of [0, len - 1, Math.floor(rand() * len)]) {
            const one = new Uint8Array(len);
            one[at] = 0x80;
            expect(wasm.isZero(place(one, offset, where)), `len=${len} at=${at} ${where}`).toBe(false);
            expect(ref.isZero(place(one, offset, 'js'))).toBe(false);
            releasePlaced();
          }
        }
      }
    }
  });
});

describe('firstDifference', () => {
  it('matches the reference for equal inputs and single differences', () => {
    for (const len of LENGTHS) {
      for (const offset of OFFSETS) {
        for (const where of PLACES) {
          const a = content(len, 'random');
          expect(wasm.firstDifference(place(a, offset, where), place(a, offset + 1, 'js'))).toBe(-1);
          expect(ref.firstDifference(place(a, offset, 'js'), place(a, 0, 'js'))).toBe(-1);
          if (len === 0) continue;
          for (const at of [0, len - 1, Math.floor(rand() * len)]) {
            const b = a.slice();
            b[at] = b[at]! ^ (1 << Math.floor(rand() * 8));
            if (at + 1 < len && rand() < 0.5) b[len - 1] = b[len - 1]! ^ 1; // a later difference must not win
            expect(wasm.firstDifference(place(a, offset, where), place(b, 2, where)), `len=${len} at=${at}`).toBe(at);
            expect(ref.firstDifference(place(a, offset, 'js'), place(b, 3, 'js'))).toBe(at);
            expect(ref.firstDifference(place(a, offset, 'js'), place(b, offset, 'js'))).toBe(at);
            releasePlaced();
          }
        }
      }
    }
  });

  it('refuses operands of different lengths', () => {
    expect(() => wasm.firstDifference(new Uint8Array(1), new Uint8Array(2))).toThrow(/differ in length/);
  });
});

describe('extractSetBits', () => {
  function naive(bits: Uint8Array, bitCount: number, start: number): number[] {
    const out: number[] = [];
    for (let i = start; i < bitCount; i++) if ((bits[i >> 3]! >> (i & 7)) & 1) out.push(i);
    return out;
  }

  /** Collects every index by resuming with an output of `cap` entries. */
  function collect(k: Kernels, bits: Uint8Array, bitCount: number, start: number, out: Uint32Array): number[] {
    const all: number[] = [];
    for (;;) {
      const n = k.extractSetBits(bits, bitCount, start, out);
      for (let i = 0; i < n; i++) all.push(out[i]!);
      if (n < out.length) return all;
      start = out[n - 1]! + 1;
    }
  }

  it('agrees with the reference and a naive scan for any bit count, start and output size', () => {
    const bitCounts = [0, 1, 7, 8, 9, 127, 128, 129, 1000, 4096 * 8 + 13, 100_003, (1 << 20) * 8 + 5];
    for (const bitCount of bitCounts) {
      for (const fill of FILLS) {
        const data = content(Math.ceil(bitCount / 8), fill);
        const truth = bitCount < 2_000_000 ? naive(data, bitCount, 0) : undefined;
        for (const start of [0, 1, 63, 64, 65, Math.floor(bitCount / 2), bitCount - 1, bitCount + 5]) {
          if (start < 0) continue;
          for (const cap of [1, 7, 1000, 1 << 18]) {
            if (cap === 1 && bitCount > 5000 && fill !== 'sparse') continue; // one call per bit: slow, and 7 covers it
            if (bitCount > 2_000_000 && (cap < 1000 || fill !== 'sparse')) continue;
            for (const offset of [0, 3]) {
              const expected = collect(ref, place(data, offset + 1, 'js'), bitCount, start, new Uint32Array(cap));
              if (truth !== undefined) expect(expected).toEqual(truth.filter((i) => i >= start));
              const outWasm = wasm.alloc(cap * 4 + 16);
              const bits = place(data, offset, offset === 0 ? 'wasm' : 'js');
              const outs = [new Uint32Array(cap), new Uint32Array(outWasm.bytes().buffer, outWasm.bytes().byteOffset + 16, cap)];
              for (const out of outs) {
                const got = collect(wasm, bits, bitCount, start, out);
                expect(got, `bits=${bitCount} ${fill} start=${start} cap=${cap} off=${offset}`).toEqual(expected);
              }
              outWasm.free();
              releasePlaced();
            }
          }
        }
      }
    }
  });

  it('ignores set bits past bitCount in the last byte', () => {
    const bits = new Uint8Array([0xff, 0xff]);
    for (const k of [ref, wasm]) {
      const out = new Uint32Array(16);
      expect(k.extractSetBits(bits, 11, 0, out)).toBe(11);
      expect(Array.from(out.subarray(0, 11))).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
      expect(k.extractSetBits(bits, 11, 9, out)).toBe(2);
      expect(k.extractSetBits(bits, 11, 11, out)).toBe(0);
    }
  });

  it('refuses a bitmap shorter than its bit count', () => {
    expect(() => wasm.extractSetBits(new Uint8Array(1), 9, 0, new Uint32Array(4))).toThrow(/need 2 bytes/);
  });
});

describe('kernel memory', () => {
  it('keeps buffers valid across memory growth and reuses freed space', () => {
    const k = createWasmKernels(4096);
    const a = k.alloc(1000);
    a.bytes().fill(7);
    const big = k.alloc(8 * 1024 * 1024); // forces growth
    expect(a.bytes().every((x) => x === 7)).toBe(true);
    expect(big.bytes().length).toBe(8 * 1024 * 1024);
    const used = k.heap.usedBytes;
    big.free();
    expect(k.heap.usedBytes).toBe(used - 8 * 1024 * 1024);
    const again = k.alloc(4096);
    expect(again.bytes().every((x) => x === 0)).toBe(true); // fresh allocations are zeroed
    again.free();
    a.free();
    expect(() => a.bytes()).toThrow(/after free/);
  });

  it('merges freed neighbours so a large block fits where small ones were', () => {
    const k = createWasmKernels(4096);
    const blocks = Array.from({ length: 8 }, () => k.alloc(1 << 16));
    const marker = k.alloc(16); // keeps the freed blocks below the top
    const highWater = k.heap.highWaterMark;
    for (const b of blocks) b.free();
    const whole = k.alloc(8 << 16);
    expect(k.heap.highWaterMark).toBe(highWater); // it fit in the merged hole
    whole.bytes().fill(1);
    whole.free();
    marker.free();
    expect(k.heap.usedBytes).toBe(2 * 4096); // only the two staging buffers remain
  });
});
