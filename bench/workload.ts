// What the end-to-end benchmarks share: sample images written to disk, the real CLI as a child
// process, timing of commands, and the medians of repeated runs.

import { execFile } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { open } from 'node:fs/promises';
import { promisify } from 'node:util';
import { seededRandom } from '../src/demo/sample-image.js';
import { median } from './harness.js';

export const run = promisify(execFile);
/** The CLI the benchmarks run; CDP_S3_BENCH_CLI points them at another build (e.g. main's, for a before/after). */
export const CLI = process.env['CDP_S3_BENCH_CLI'] ?? new URL('../src/cli/main.js', import.meta.url).pathname;
export const AWS = '/usr/bin/aws';
export const REGION = 1024 * 1024;

/** Writes an image region by region: 70% random, 20% zero, 10% copies of earlier regions. */
export async function writeImage(path: string, size: number, seed: number): Promise<void> {
  const rand = seededRandom(seed);
  const file = await open(path, 'w');
  const region = Buffer.alloc(REGION);
  const repeatable: Buffer[] = [];
  try {
    for (let offset = 0; offset < size; offset += REGION) {
      const roll = rand();
      if (roll < 0.2) region.fill(0);
      else if (roll < 0.3 && repeatable.length > 0) repeatable[Math.floor(rand() * repeatable.length)]!.copy(region);
      else {
        randomFillSync(region);
        if (repeatable.length < 64) repeatable.push(Buffer.from(region));
      }
      await file.write(region, 0, Math.min(REGION, size - offset), offset);
    }
  } finally {
    await file.close();
  }
}

/** Rewrites `fraction` of the regions with new random bytes; returns the changed byte ranges. */
export async function changeRegions(path: string, size: number, fraction: number, seed: number): Promise<string> {
  const rand = seededRandom(seed);
  const regions = Math.ceil(size / REGION);
  const chosen = new Set<number>();
  while (chosen.size < Math.max(1, Math.round(regions * fraction))) chosen.add(Math.floor(rand() * regions));
  const file = await open(path, 'r+');
  const bytes = Buffer.alloc(REGION);
  const lines: string[] = [];
  try {
    for (const r of [...chosen].sort((a, b) => a - b)) {
      randomFillSync(bytes);
      const length = Math.min(REGION, size - r * REGION);
      await file.write(bytes, 0, length, r * REGION);
      lines.push(`${r * REGION} ${length}`);
    }
  } finally {
    await file.close();
  }
  return `${lines.join('\n')}\n`;
}

export async function seconds(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<number> {
  const start = process.hrtime.bigint();
  await run(command, args, { env, maxBuffer: 64 * 1024 * 1024 });
  return Number(process.hrtime.bigint() - start) / 1e9;
}

export async function cdp(args: string[], env?: NodeJS.ProcessEnv): Promise<{ seconds: number; json: Record<string, unknown> }> {
  const start = process.hrtime.bigint();
  const { stdout } = await run(process.execPath, [CLI, '--json', ...args], { env: env ?? process.env, maxBuffer: 64 * 1024 * 1024 });
  return { seconds: Number(process.hrtime.bigint() - start) / 1e9, json: JSON.parse(stdout) as Record<string, unknown> };
}

/** Peak resident set size (MiB) of one CLI run, from GNU time. */
export async function peakRss(args: string[]): Promise<number> {
  const { stderr } = await run('/usr/bin/time', ['-f', 'MAXRSS_KB=%M', process.execPath, CLI, ...args], { maxBuffer: 64 * 1024 * 1024 });
  const kb = Number(/MAXRSS_KB=(\d+)/.exec(stderr)?.[1]);
  return kb / 1024;
}

export async function medianOf(runs: number, once: (i: number) => Promise<number>): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < runs; i++) times.push(await once(i));
  return median(times);
}

