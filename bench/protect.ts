// `npm run bench -- protect [--json] [--seconds 30] [--interval 5s] [--rate 20MB]`: recovery
// point objective under load. A steady stream of random 4 KiB–1 MiB writes at the given rate
// goes through `protect`'s NBD export (one qemu-io process fed commands on stdin), while the
// oldest unshipped write's age is sampled every 100 ms. Target: it stays under 2 × interval.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDuration, parseSize } from '../src/cli/units.js';
import { protect } from '../src/core/protect.js';
import { seededRandom } from '../src/demo/sample-image.js';
import { openStore } from '../src/store/open.js';
import { median, option, table } from './harness.js';
import { cdp, writeImage } from './workload.js';

export interface ProtectBenchRow {
  measure: string;
  value: string;
  target: string;
}


function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;
}

export async function runProtectBench(argv: string[], log: (line: string) => void): Promise<ProtectBenchRow[]> {
  const seconds = Number(option(argv, '--seconds', '30'));
  const intervalMs = parseDuration(option(argv, '--interval', '5s'), '--interval');
  const rate = parseSize(option(argv, '--rate', '20MB'), '--rate');
  const size = parseSize(option(argv, '--size', '1GiB'), '--size');
  const dir = await mkdtemp(join(tmpdir(), 'cdp-bench-protect-'));
  try {
    const image = join(dir, 'disk.img');
    const repo = join(dir, 'repo');
    log(`writing a ${size}-byte image and its base backup…`);
    await writeImage(image, size, 11);
    await cdp(['--repo', repo, 'init', '--from', image]);
    await cdp(['--repo', repo, 'backup', image]);
    const store = openStore(repo);
    const controller = new AbortController();
    const handle = await protect({ store, source: image, drl: join(dir, 'disk.drl'), listen: { host: '127.0.0.1', port: 0 }, intervalMs, signal: controller.signal });
    const qemu = spawn('qemu-io', ['-f', 'raw', '-t', 'none', `nbd://127.0.0.1:${handle.port}`], { stdio: ['pipe', 'ignore', 'inherit'] });
    const rand = seededRandom(5);
    const lags: number[] = [];
    let written = 0;
    const start = Date.now();
    log(`writing ${(rate / 1e6).toFixed(0)} MB/s of random 4 KiB–1 MiB writes for ${seconds} s, a point in time every ${intervalMs} ms…`);
    const sampler = setInterval(() => lags.push(handle.volume.status().lagMs), 100);
    while (Date.now() - start < seconds * 1000) {
      // Pace to the target rate: write when behind, sleep a little when ahead.
      if (written < ((Date.now() - start) / 1000) * rate) {
        const length = 4096 * (1 + Math.floor(rand() * 256)); // 4 KiB … 1 MiB
        const offset = Math.floor(rand() * ((size - length) / 4096)) * 4096;
        qemu.stdin.write(`write -P ${Math.floor(rand() * 256)} ${offset} ${length}\n`);
        written += length;
      } else await new Promise((r) => setTimeout(r, 5));
    }
    qemu.stdin.end('flush\nquit\n');
    await new Promise((r) => qemu.once('exit', r));
    clearInterval(sampler);
    const shipped = handle.volume.status().deltasShipped;
    await handle.stop();
    const sorted = [...lags].sort((a, b) => a - b);
    const bound = 2 * intervalMs;
    return [
      { measure: 'write rate', value: `${(written / seconds / 1e6).toFixed(1)} MB/s for ${seconds} s`, target: `${(rate / 1e6).toFixed(0)} MB/s` },
      { measure: 'points in time shipped', value: String(shipped), target: `~${Math.floor((seconds * 1000) / intervalMs)}` },
      { measure: 'oldest unshipped write, median', value: `${median(sorted).toFixed(0)} ms`, target: '' },
      { measure: 'oldest unshipped write, p95', value: `${percentile(sorted, 95).toFixed(0)} ms`, target: `< ${bound} ms` },
      { measure: 'oldest unshipped write, max', value: `${(sorted.at(-1) ?? 0).toFixed(0)} ms`, target: `< ${bound} ms` },
    ];
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function renderProtectBench(rows: ProtectBenchRow[]): string {
  return table(
    ['measure', 'value', 'target'],
    rows.map((r) => [r.measure, r.value, r.target]),
  );
}
