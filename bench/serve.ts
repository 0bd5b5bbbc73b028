// `npm run bench -- serve [--json] [--size 1GiB] [--runs 3] [--s3-size 256MiB]`: reading a point
// in time over NBD (`cdp-s3 serve`, read by nbdcopy) against restoring the same point in time,
// in the same run:
//
//  - baseline: restore of the PIT to a file (in-process, every region verified, fsynced), and
//    restore to stdout (regions in volume order, no file);
//  - nbdcopy of the served export to null: with its defaults (multi-conn, many requests in
//    flight), and with one connection and one request at a time (sequential reads: only the
//    server's read-ahead keeps it fast). Each run starts a fresh `cdp-s3 serve` (cold cache) and
//    times nbdcopy alone;
//  - the same against the S3 test server (s3rver) with a smaller image.
//
// Target: serving reads at least 70% of restore's throughput.

import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/cli/units.js';
import { parsePointSelector } from '../src/core/points.js';
import { executeRestore, planRestore } from '../src/core/restore.js';
import { s3ServerEnv, startS3Server } from '../src/dev/s3-server.js';
import { openStore } from '../src/store/open.js';
import { type BenchRow, option, table } from './harness.js';
import { CLI, cdp, medianOf, run, seconds, writeImage } from './workload.js';

export type ServeBenchRow = BenchRow;


/** Seconds of an in-process restore of the latest PIT (to a file, or to stdout sent to /dev/null). */
async function timeRestore(repo: string, to: string): Promise<number> {
  const start = process.hrtime.bigint();
  const store = openStore(repo);
  const plan = await planRestore({ store, at: parsePointSelector('latest') });
  if (to === '-') {
    const out = createWriteStream('/dev/null');
    await executeRestore(plan, { to, stdout: out });
    await new Promise((resolve) => out.end(resolve));
  } else {
    await rm(to, { force: true });
    await executeRestore(plan, { to });
  }
  return Number(process.hrtime.bigint() - start) / 1e9;
}

/** Starts `cdp-s3 serve` on a free port, runs nbdcopy against it, stops it; seconds of nbdcopy. */
async function timeServe(repo: string, nbdcopyArgs: string[], env: NodeJS.ProcessEnv): Promise<number> {
  const child = spawn(process.execPath, [CLI, '--repo', repo, '--json', 'serve', '--at', 'latest', '--listen', '127.0.0.1:0'], {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  try {
    let port: number | undefined;
    while (port === undefined) {
      if (child.exitCode !== null) throw new Error(`serve exited: ${stderr}`);
      try {
        port = (JSON.parse(stdout) as { port: number }).port;
      } catch {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    return await seconds('nbdcopy', [...nbdcopyArgs, `nbd://127.0.0.1:${port}`, 'null:'], env);
  } finally {
    child.kill('SIGINT');
    const code = await exited;
    if (code !== 0) throw new Error(`serve exited ${code}: ${stderr}`);
  }
}

async function compare(
  rows: ServeBenchRow[],
  label: string,
  repo: string,
  size: number,
  runs: number,
  dir: string,
  env: NodeJS.ProcessEnv,
): Promise<void> {
  const mbps = (s: number): number => size / s / 1e6;
  const restoreFile = await medianOf(runs, () => timeRestore(repo, join(dir, 'restored.img')));
  const restoreStdout = await medianOf(runs, () => timeRestore(repo, '-'));
  await rm(join(dir, 'restored.img'), { force: true });
  const served = await medianOf(runs, () => timeServe(repo, [], env));
  const sequential = await medianOf(runs, () => timeServe(repo, ['--connections=1', '--requests=1'], env));
  rows.push({ measure: `restore to a file, ${label} (baseline)`, seconds: restoreFile, MBps: mbps(restoreFile), target: '', note: 'verified, fsynced' });
  rows.push({ measure: `restore to stdout, ${label}`, seconds: restoreStdout, MBps: mbps(restoreStdout), target: '', note: 'verified, in volume order' });
  rows.push({
    measure: `serve + nbdcopy, ${label}`,
    seconds: served,
    MBps: mbps(served),
    baseline: 'restore to a file',
    ratio: restoreFile / served,
    target: '>= 0.7x',
    note: `${(restoreStdout / served).toFixed(2)}x restore to stdout; nbdcopy defaults (multi-conn)`,
  });
  rows.push({
    measure: `serve + nbdcopy 1 conn 1 request, ${label}`,
    seconds: sequential,
    MBps: mbps(sequential),
    baseline: 'restore to a file',
    ratio: restoreFile / sequential,
    target: '>= 0.7x',
    note: 'one request at a time: read-ahead at work',
  });
}

export async function runServeBench(argv: string[], log: (line: string) => void): Promise<ServeBenchRow[]> {
  const size = parseSize(option(argv, '--size', '1GiB'), '--size');
  const runs = Number(option(argv, '--runs', '3'));
  const s3Size = parseSize(option(argv, '--s3-size', '256MiB'), '--s3-size');
  const dir = await mkdtemp(join(tmpdir(), 'cdp-bench-serve-'));
  const rows: ServeBenchRow[] = [];
  try {
    const image = join(dir, 'disk.img');
    log(`writing a ${size}-byte image and backing it up…`);
    await writeImage(image, size, 3);
    const repo = join(dir, 'repo');
    await cdp(['--repo', repo, 'init', '--from', image]);
    await cdp(['--repo', repo, 'backup', image]);
    await run('dd', [`if=${image}`, 'of=/dev/null', 'bs=16M', 'status=none']);
    log('local store: restore vs serve…');
    await compare(rows, 'local store', repo, size, runs, dir, process.env);

    log(`S3 test server: a ${s3Size}-byte image…`);
    const s3image = join(dir, 's3disk.img');
    await writeImage(s3image, s3Size, 4);
    const server = await startS3Server({ buckets: ['bench'], directory: join(dir, 's3') });
    const env: NodeJS.ProcessEnv = { ...process.env, ...s3ServerEnv(server), AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
    delete env['AWS_CA_BUNDLE'];
    const saved = { ...process.env };
    try {
      Object.assign(process.env, env);
      delete process.env['AWS_CA_BUNDLE'];
      await cdp(['--repo', 's3://bench/disk', 'init', '--from', s3image], env);
      await cdp(['--repo', 's3://bench/disk', 'backup', s3image], env);
      await compare(rows, 'S3 server', 's3://bench/disk', s3Size, runs, dir, env);
    } finally {
      process.env = saved;
      await server.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return rows;
}

export function renderServeBench(rows: ServeBenchRow[]): string {
  const f = (x: number | undefined, digits = 2): string => (x === undefined ? '' : x.toFixed(digits));
  return table(
    ['measure', 'seconds', 'MB/s', 'baseline', 'ratio', 'target', 'note'],
    rows.map((r) => [r.measure, f(r.seconds, 3), f(r.MBps, 0), r.baseline ?? '', f(r.ratio), r.target, r.note ?? '']),
  );
}
