// The one kernel loader. It compiles build/kernels.wasm once per process and hands out a single
// WasmKernels instance that owns the module's memory. CDP_S3_KERNELS=reference selects the
// plain-TypeScript kernels instead (for debugging and for measuring what SIMD buys).

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CdpError } from '../errors.js';
import { referenceKernels } from './reference.js';
import type { Kernels } from './types.js';
import { type KernelExports, WasmKernels } from './wasm.js';

export type { KernelBuffer, Kernels } from './types.js';
export { referenceKernels } from './reference.js';
export { WasmKernels } from './wasm.js';

const WASM_FILE = join('build', 'kernels.wasm');

let loaded: WasmKernels | undefined;

/** Finds build/kernels.wasm by walking up from this file (works from src/ and from dist/src/). */
function findWasm(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(dir, WASM_FILE);
    if (existsSync(candidate)) return candidate;
    const parent = dirname(dir);
    if (parent === dir) {
      throw new CdpError('NOT_FOUND', `${WASM_FILE} not found above ${fileURLToPath(import.meta.url)}: run \`npm run build\``);
    }
    dir = parent;
  }
}

let compiled: WebAssembly.Module | undefined;

/**
 * A new kernel instance with memory of its own. chunkBytes is how much of an operand outside
 * WASM memory is staged per call; tests make it small to exercise chunking.
 */
export function createWasmKernels(chunkBytes?: number): WasmKernels {
  compiled ??= new WebAssembly.Module(readFileSync(findWasm()));
  const instance = new WebAssembly.Instance(compiled, {});
  return new WasmKernels(instance.exports as unknown as KernelExports, chunkBytes);
}

/** The process-wide kernel instance, compiled on first use. */
export function wasmKernels(): WasmKernels {
  loaded ??= createWasmKernels();
  return loaded;
}

/** The kernels the engine uses: WASM SIMD unless CDP_S3_KERNELS=reference. */
export function kernels(): Kernels {
  return process.env['CDP_S3_KERNELS'] === 'reference' ? referenceKernels : wasmKernels();
}
