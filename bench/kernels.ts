// `npm run bench -- kernels [--json]`: throughput of each WASM kernel on data already in WASM
// memory, of its plain-TypeScript reference, of the Node built-in where one exists, and of
// memcpy (Buffer.copy), all measured in the same run; plus the cost of copying data into WASM
// memory, on its own line.

import { referenceKernels, wasmKernels } from '../src/kernels/index.js';
import { formatBytes, gbps, measure, table } from './harness.js';

export interface KernelResult {
  kernel: string;
  bytes: number;
  wasmGBps: number;
  referenceGBps: number;
  /** WASM over reference. */
  ratio: number;
  /** Node built-ins doing the same work, GB/s by name. */
  builtins?: Record<string, number>;
  memcpyGBps: number;
  /** The target for ratio, where it sets one. */
  target?: string;
}

const SIZES = [1024 * 1024, 64 * 1024 * 1024];

function fillRandom(bytes: Uint8Array, seed: number): void {
  let x = seed >>> 0 || 1;
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2);
  for (let i = 0; i < words.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    words[i] = x;
  }
}

function fillSparse(bytes: Uint8Array, density: number, seed: number): void {
  let x = seed >>> 0 || 1;
  const bits = bytes.length * 8;
  const count = Math.floor(bits * density);
  for (let i = 0; i < count; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    const bit = (x >>> 0) % bits;
    bytes[bit >>> 3]! |= 1 << (bit & 7);
  }
}

export function runKernelBench(): { results: KernelResult[]; copyIn: Array<{ bytes: number; GBps: number }> } {
  const wasm = wasmKernels();
  const ref = referenceKernels;
  const results: KernelResult[] = [];
  const copyIn: Array<{ bytes: number; GBps: number }> = [];

  for (const size of SIZES) {
    // Operands in WASM memory for the WASM kernels, in ordinary Buffers for everything else.
    const wa = wasm.alloc(size);
    const wb = wasm.alloc(size);
    const ja = Buffer.alloc(size);
    const jb = Buffer.alloc(size);
    fillRandom(ja, 1);
    fillRandom(jb, 2);
    wa.bytes().set(ja);
    wb.bytes().set(jb);
    const copyTarget = Buffer.alloc(size);
    const memcpy = gbps(size, measure(() => ja.copy(copyTarget)).seconds);
    copyIn.push({ bytes: size, GBps: gbps(size, measure(() => wa.bytes().set(jb)).seconds) });
    wa.bytes().set(ja);

    const add = (
      kernel: string,
      wasmOp: () => void,
      refOp: () => void,
      target?: string,
      builtins: Array<[string, () => void]> = [],
    ): void => {
      const wasmGBps = gbps(size, measure(wasmOp).seconds);
      const referenceGBps = gbps(size, measure(refOp).seconds);
      const result: KernelResult = { kernel, bytes: size, wasmGBps, referenceGBps, ratio: wasmGBps / referenceGBps, memcpyGBps: memcpy };
      if (target !== undefined) result.target = target;
      if (builtins.length > 0) {
        result.builtins = Object.fromEntries(builtins.map(([name, op]) => [name, gbps(size, measure(op).seconds)]));
      }
      results.push(result);
    };

    // In-place ops change their destination each run; throughput does not depend on the values.
    add('union (or)', () => wasm.or(wa.bytes(), wb.bytes()), () => ref.or(ja, jb), '>= 2.5x');
    add('difference (andNot)', () => wasm.andNot(wa.bytes(), wb.bytes()), () => ref.andNot(ja, jb), '>= 2.5x');
    add('intersection (and)', () => wasm.and(wa.bytes(), wb.bytes()), () => ref.and(ja, jb));
    add('xor', () => wasm.xor(wa.bytes(), wb.bytes()), () => ref.xor(ja, jb));

    fillRandom(ja, 3);
    wa.bytes().set(ja);
    add('popcount', () => wasm.popcount(wa.bytes()), () => ref.popcount(ja), '>= 4x');

    // All-zero test on zeros: the whole range must be read (the case that costs).
    wa.bytes().fill(0);
    ja.fill(0);
    add('all-zero test', () => wasm.isZero(wa.bytes()), () => ref.isZero(ja), '>= 3x and >= 50% memcpy');

    // Compare equal ranges: again the whole range is read.
    fillRandom(ja, 4);
    jb.set(ja);
    wa.bytes().set(ja);
    wb.bytes().set(ja);
    add('first difference', () => wasm.firstDifference(wa.bytes(), wb.bytes()), () => ref.firstDifference(ja, jb), undefined, [
      ['Buffer.equals', () => ja.equals(jb)],
      ['Buffer.compare', () => Buffer.compare(ja, jb)],
    ]);

    // Set-bit extraction over a bitmap with 1% of bits set.
    ja.fill(0);
    fillSparse(ja, 0.01, 5);
    wa.bytes().set(ja);
    const out = new Uint32Array(1 << 16);
    const extractAll = (k: typeof wasm | typeof ref, bits: Uint8Array): void => {
      let start = 0;
      for (;;) {
        const n = k.extractSetBits(bits, size * 8, start, out);
        if (n < out.length) return;
        start = out[n - 1]! + 1;
      }
    };
    add('set-bit extraction (1%)', () => extractAll(wasm, wa.bytes()), () => extractAll(ref, ja), '>= 3x');

    wa.free();
    wb.free();
  }
  return { results, copyIn };
}

export function renderKernelBench(run: ReturnType<typeof runKernelBench>): string {
  const f = (x: number | undefined): string => (x === undefined ? '' : x.toFixed(2));
  const rows = run.results.map((r) => [
    r.kernel,
    formatBytes(r.bytes),
    f(r.wasmGBps),
    f(r.referenceGBps),
    `${r.ratio.toFixed(2)}x`,
    Object.entries(r.builtins ?? {})
      .map(([name, value]) => `${name} ${f(value)}`)
      .join(', '),
    f(r.memcpyGBps),
    `${((r.wasmGBps / r.memcpyGBps) * 100).toFixed(0)}%`,
    r.target ?? '',
  ]);
  const lines = [
    table(['kernel', 'size', 'wasm GB/s', 'ref GB/s', 'wasm/ref', 'Node built-in GB/s', 'memcpy GB/s', 'wasm/memcpy', 'target'], rows),
    '',
    ...run.copyIn.map((c) => `copy into WASM memory, ${formatBytes(c.bytes)}: ${c.GBps.toFixed(2)} GB/s`),
  ];
  return lines.join('\n');
}
