// `npm run bench -- repo [--json] [--size 2GiB] [--runs 3] [--s3-size 512MiB]`: backup and
// restore against baselines measured in the same run, through the real CLI (child processes):
//
//  - hashing baseline: `openssl dgst -sha256` of the same page-cached image (one core, SHA-NI);
//  - full backup of the image (70% random, 20% zero, 10% repeated regions) into a local
//    directory store, and restore from it with every region verified: ratio to the baseline;
//  - incremental backup after 1% of regions changed, with and without --changed, as a share
//    of the full backup's time, and the bytes each one uploaded;
//  - against the S3 test server (s3rver): backup and restore throughput as a ratio of
//    `aws s3 cp` (Debian awscli) moving the same bytes to and from the same server;
//  - peak RSS of backup and restore of an 8 GiB sparse image (GNU time's %M).

import { randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/cli/units.js';
import { seededRandom } from '../src/demo/sample-image.js';
import { s3ServerEnv, startS3Server } from '../src/dev/s3-server.js';
import { table } from './harness.js';
import { AWS, REGION, cdp, changeRegions, medianOf, peakRss, run, seconds, writeImage } from './workload.js';

interface Options {
  size: number;
  runs: number;
  s3Size: number;
  sparseSize: number;
}

export interface RepoBenchRow {
  measure: string;
  seconds: number;
  MBps?: number;
  baseline?: string;
  baselineSeconds?: number;
  ratio?: number;
  target: string;
  note?: string;
}

function parseOptions(argv: string[]): Options {
  const value = (name: string, fallback: string): string => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : fallback;
  };
  return {
    size: parseSize(value('--size', '2GiB'), '--size'),
    runs: Number(value('--runs', '3')),
    s3Size: parseSize(value('--s3-size', '512MiB'), '--s3-size'),
    sparseSize: parseSize(value('--sparse-size', '8GiB'), '--sparse-size'),
  };
}

export async function runRepoBench(argv: string[], log: (line: string) => void): Promise<RepoBenchRow[]> {
  const o = parseOptions(argv);
  const dir = await mkdtemp(join(tmpdir(), 'cdp-bench-'));
  const rows: RepoBenchRow[] = [];
  const mbps = (bytes: number, s: number): number => bytes / s / 1e6;
  try {
    const image = join(dir, 'disk.img');
    log(`writing a ${o.size}-byte image…`);
    await writeImage(image, o.size, 1);
    await run('dd', [`if=${image}`, 'of=/dev/null', 'bs=16M', 'status=none']);

    const openssl = await medianOf(o.runs, () => seconds('openssl', ['dgst', '-sha256', image]));
    rows.push({ measure: 'openssl dgst -sha256 (baseline)', seconds: openssl, MBps: mbps(o.size, openssl), target: '' });
    // What this disk allows for writing the image durably: the bound for a local-store backup
    // (which writes the ~70% that is not zero or repeated) and for a restore (which writes it all).
    const copy = join(dir, 'copy.img');
    const cpSync = await medianOf(o.runs, async () => {
      await rm(copy, { force: true });
      await run('sync');
      return seconds('sh', ['-c', `cp '${image}' '${copy}' && sync '${copy}'`]);
    });
    await rm(copy, { force: true });
    rows.push({ measure: 'cp + sync of the image (disk baseline)', seconds: cpSync, MBps: mbps(o.size, cpSync), target: '' });

    // Full backups, each into a fresh repository.
    let lastRepo = '';
    const full = await medianOf(o.runs, async (i) => {
      const repo = join(dir, `repo-${i}`);
      await rm(repo, { recursive: true, force: true });
      await cdp(['--repo', repo, 'init', '--from', image]);
      lastRepo = repo;
      await run('sync');
      return (await cdp(['--repo', repo, 'backup', image])).seconds;
    });
    rows.push({
      measure: 'full backup, local store',
      seconds: full,
      MBps: mbps(o.size, full),
      baseline: 'openssl',
      baselineSeconds: openssl,
      ratio: openssl / full,
      target: '>= 1.0x',
      note: `${(cpSync / full).toFixed(2)}x cp + sync`,
    });

    // Restore, digests verified on the worker threads.
    const restored = join(dir, 'restored.img');
    const restore = await medianOf(o.runs, async () => {
      await rm(restored, { force: true });
      await run('sync');
      return (await cdp(['--repo', lastRepo, 'restore', '--at', 'latest', '--to', restored])).seconds;
    });
    rows.push({
      measure: 'restore, local store (verified)',
      seconds: restore,
      MBps: mbps(o.size, restore),
      baseline: 'openssl',
      baselineSeconds: openssl,
      ratio: openssl / restore,
      target: '>= 1.0x',
      note: `${(cpSync / restore).toFixed(2)}x cp + sync`,
    });
    const same = await seconds('cmp', ['-s', image, restored]).then(
      () => true,
      () => false,
    );
    if (!same) throw new Error('restored image differs from the source');

    // Incremental after 1% of regions changed: with --changed, then (another 1%) without.
    const changedFile = join(dir, 'changed.txt');
    const withChanged = await medianOf(o.runs, async (i) => {
      await writeFile(changedFile, await changeRegions(image, o.size, 0.01, 100 + i));
      const r = await cdp(['--repo', lastRepo, 'backup', image, '--changed', changedFile]);
      return r.seconds;
    });
    rows.push({
      measure: 'incremental 1%, --changed',
      seconds: withChanged,
      baseline: 'full backup',
      baselineSeconds: full,
      ratio: withChanged / full,
      target: '<= 0.05 of full',
    });
    let storedWithout = 0;
    const without = await medianOf(o.runs, async (i) => {
      await changeRegions(image, o.size, 0.01, 200 + i);
      const r = await cdp(['--repo', lastRepo, 'backup', image]);
      storedWithout = Number(r.json['bytesStored']);
      return r.seconds;
    });
    rows.push({
      measure: 'incremental 1%, full scan',
      seconds: without,
      baseline: 'full backup',
      baselineSeconds: full,
      ratio: without / full,
      target: '<= 1.0 of full',
      note: `uploaded ${(storedWithout / 1e6).toFixed(1)} MB (1% is ${((o.size * 0.01) / 1e6).toFixed(1)} MB)`,
    });

    // Against the S3 test server, next to aws s3 cp of the same bytes.
    if (existsSync(AWS)) {
      const s3image = join(dir, 's3disk.img');
      await writeImage(s3image, o.s3Size, 2);
      const server = await startS3Server({ buckets: ['bench'], directory: join(dir, 's3') });
      const env: NodeJS.ProcessEnv = { ...process.env, ...s3ServerEnv(server), AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
      delete env['AWS_CA_BUNDLE'];
      try {
        const awsArgs = ['--endpoint-url', server.endpoint, 's3', 'cp'];
        const awsUp = await medianOf(o.runs, (i) => seconds(AWS, [...awsArgs, s3image, `s3://bench/aws/copy-${i}.img`, '--quiet'], env));
        const awsDown = await medianOf(o.runs, (i) => seconds(AWS, [...awsArgs, 's3://bench/aws/copy-0.img', join(dir, `aws-down-${i}.img`), '--quiet'], env));
        let s3repo = '';
        const up = await medianOf(o.runs, async (i) => {
          s3repo = `s3://bench/cdp-${i}`;
          await cdp(['--repo', s3repo, 'init', '--from', s3image], env);
          return (await cdp(['--repo', s3repo, 'backup', s3image], env)).seconds;
        });
        const s3restored = join(dir, 's3restored.img');
        const down = await medianOf(o.runs, async () => {
          await rm(s3restored, { force: true });
          return (await cdp(['--repo', s3repo, 'restore', '--at', 'latest', '--to', s3restored], env)).seconds;
        });
        rows.push({ measure: 'aws s3 cp upload (baseline)', seconds: awsUp, MBps: mbps(o.s3Size, awsUp), target: '' });
        rows.push({ measure: 'backup to S3 server', seconds: up, MBps: mbps(o.s3Size, up), baseline: 'aws s3 cp up', baselineSeconds: awsUp, ratio: awsUp / up, target: '>= 0.8x' });
        rows.push({ measure: 'aws s3 cp download (baseline)', seconds: awsDown, MBps: mbps(o.s3Size, awsDown), target: '' });
        rows.push({
          measure: 'restore from S3 server',
          seconds: down,
          MBps: mbps(o.s3Size, down),
          baseline: 'aws s3 cp down',
          baselineSeconds: awsDown,
          ratio: awsDown / down,
          target: '>= 0.8x',
        });
      } finally {
        await server.stop();
      }
    } else log(`${AWS} not found (apt-get install awscli): S3 rows skipped`);

    // Peak RSS on an 8 GiB sparse image with 5% of its regions holding data.
    if (existsSync('/usr/bin/time')) {
      const sparse = join(dir, 'sparse.img');
      const file = await open(sparse, 'w');
      await file.truncate(o.sparseSize);
      const bytes = Buffer.alloc(REGION);
      const rand = seededRandom(3);
      for (let r = 0; r < o.sparseSize / REGION; r++) {
        if (rand() < 0.05) {
          randomFillSync(bytes);
          await file.write(bytes, 0, REGION, r * REGION);
        }
      }
      await file.close();
      const repo = join(dir, 'repo-sparse');
      await cdp(['--repo', repo, 'init', '--from', sparse]);
      const backupRss = await peakRss(['--repo', repo, 'backup', sparse]);
      const restoreRss = await peakRss(['--repo', repo, 'restore', '--at', 'latest', '--to', join(dir, 'sparse-restored.img')]);
      rows.push({ measure: `peak RSS, backup of ${o.sparseSize / 2 ** 30} GiB sparse`, seconds: 0, target: '<= 300 MB', note: `${backupRss.toFixed(0)} MiB` });
      rows.push({ measure: `peak RSS, restore of ${o.sparseSize / 2 ** 30} GiB sparse`, seconds: 0, target: '<= 300 MB', note: `${restoreRss.toFixed(0)} MiB` });
    } else log('/usr/bin/time not found (apt-get install time): RSS rows skipped');
    return rows;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function renderRepoBench(rows: RepoBenchRow[]): string {
  const f = (x: number | undefined, digits = 2): string => (x === undefined ? '' : x.toFixed(digits));
  return table(
    ['measure', 'seconds', 'MB/s', 'baseline', 'baseline s', 'ratio', 'target', 'note'],
    rows.map((r) => [r.measure, r.seconds === 0 ? '' : f(r.seconds, 3), f(r.MBps, 0), r.baseline ?? '', f(r.baselineSeconds, 3), f(r.ratio), r.target, r.note ?? '']),
  );
}
