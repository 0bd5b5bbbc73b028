// `npm run bench -- scan [--json] [--size 2GiB] [--runs 3] [--s3-size 512MiB]`: the integrity
// side, through the real CLI, against baselines measured in the same run:
//
//  - a full scan of an in-sync, page-cached image vs `openssl dgst -sha256` of it (one core);
//  - a scan with a dirty region log naming 1% of the regions, as a share of the full scan;
//  - the bytes a scan downloads from the repository (metadata only, no region data);
//  - restore --reuse-target after 2% of the regions changed, as a share of a plain restore;
//  - verify --read-data against the S3 test server vs `aws s3 cp` downloading the same bytes.

import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/cli/units.js';
import { s3ServerEnv, startS3Server } from '../src/dev/s3-server.js';
import { DirtyRegionLog } from '../src/volume/dirty-region-log.js';
import { type BenchRow, option, table } from './harness.js';
import { AWS, REGION, cdp, changeRegions, medianOf, run, seconds, writeImage } from './workload.js';

export type ScanBenchRow = BenchRow;


export async function runScanBench(argv: string[], log: (line: string) => void): Promise<ScanBenchRow[]> {
  const size = parseSize(option(argv, '--size', '2GiB'), '--size');
  const runs = Number(option(argv, '--runs', '3'));
  const s3Size = parseSize(option(argv, '--s3-size', '512MiB'), '--s3-size');
  const dir = await mkdtemp(join(tmpdir(), 'cdp-bench-scan-'));
  const rows: ScanBenchRow[] = [];
  const mbps = (bytes: number, s: number): number => bytes / s / 1e6;
  try {
    const image = join(dir, 'disk.img');
    log(`writing a ${size}-byte image and backing it up…`);
    await writeImage(image, size, 7);
    const repo = join(dir, 'repo');
    const init = await cdp(['--repo', repo, 'init', '--from', image]);
    await cdp(['--repo', repo, 'backup', image]);
    await run('dd', [`if=${image}`, 'of=/dev/null', 'bs=16M', 'status=none']);

    const openssl = await medianOf(runs, () => seconds('openssl', ['dgst', '-sha256', image]));
    rows.push({ measure: 'openssl dgst -sha256 (baseline)', seconds: openssl, MBps: mbps(size, openssl), target: '' });
    let fetched = 0;
    const full = await medianOf(runs, async () => {
      const r = await cdp(['--repo', repo, 'scan', image]);
      fetched = Number(r.json['bytesFetched']);
      if (r.json['discrepancies'] !== 0) throw new Error('the image should be in sync');
      return r.seconds;
    });
    rows.push({
      measure: 'full scan, in sync (2 cores)',
      seconds: full,
      MBps: mbps(size, full),
      baseline: 'openssl',
      ratio: openssl / full,
      target: '>= 1.3x',
      note: `fetched ${fetched} bytes of metadata, 0 of region data`,
    });

    // A dirty region log naming 1% of the regions.
    const regionCount = Math.ceil(size / REGION);
    const drlPath = join(dir, 'disk.drl');
    const volumeId = String(init.json['volumeId']);
    const drlScan = await medianOf(runs, async (i) => {
      const drl = await DirtyRegionLog.create(drlPath, { volumeId, regionCount, regionSize: REGION, overwrite: true });
      const listed = Array.from({ length: Math.max(1, Math.round(regionCount * 0.01)) }, (_, k) => (k * 97 + i) % regionCount);
      await drl.mark(listed);
      await drl.close();
      return (await cdp(['--repo', repo, 'scan', image, '--drl', drlPath])).seconds;
    });
    rows.push({ measure: 'scan with a DRL naming 1%', seconds: drlScan, baseline: 'full scan', ratio: drlScan / full, target: '<= 0.05 of full' });

    // Plain restore vs --reuse-target of a copy that is 2% behind.
    const target = join(dir, 'target.img');
    const plain = await medianOf(runs, async () => {
      await rm(target, { force: true });
      await run('sync');
      return (await cdp(['--repo', repo, 'restore', '--at', 'latest', '--to', target])).seconds;
    });
    const reuse = await medianOf(runs, async (i) => {
      await changeRegions(target, size, 0.02, 300 + i); // the target drifts 2% away from the point in time
      await run('sync');
      const r = await cdp(['--repo', repo, 'restore', '--at', 'latest', '--to', target, '--reuse-target']);
      return r.seconds;
    });
    rows.push({ measure: 'restore (plain, local store)', seconds: plain, MBps: mbps(size, plain), target: '' });
    rows.push({ measure: 'restore --reuse-target, 2% differ', seconds: reuse, baseline: 'plain restore', ratio: reuse / plain, target: '<= 0.20 of plain' });
    const same = await seconds('cmp', ['-s', image, target]).then(
      () => true,
      () => false,
    );
    if (!same) throw new Error('--reuse-target did not reproduce the image');

    // verify --read-data against the S3 server, next to aws s3 cp of the same bytes.
    if (existsSync(AWS)) {
      const s3image = join(dir, 's3disk.img');
      await writeImage(s3image, s3Size, 8);
      const server = await startS3Server({ buckets: ['bench'], directory: join(dir, 's3') });
      const env: NodeJS.ProcessEnv = { ...process.env, ...s3ServerEnv(server), AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
      delete env['AWS_CA_BUNDLE'];
      try {
        const s3repo = 's3://bench/verify';
        await cdp(['--repo', s3repo, 'init', '--from', s3image], env);
        const stored = Number((await cdp(['--repo', s3repo, 'backup', s3image], env)).json['bytesStored']);
        const blob = join(dir, 'blob.bin');
        await writeFile(blob, Buffer.alloc(0));
        await run('sh', ['-c', `head -c ${stored} '${s3image}' > '${blob}'`]);
        await seconds(AWS, ['--endpoint-url', server.endpoint, 's3', 'cp', blob, 's3://bench/aws/blob.bin', '--quiet'], env);
        const awsDown = await medianOf(runs, (i) =>
          seconds(AWS, ['--endpoint-url', server.endpoint, 's3', 'cp', 's3://bench/aws/blob.bin', join(dir, `down-${i}.bin`), '--quiet'], env),
        );
        const verifyRead = await medianOf(runs, async () => (await cdp(['--repo', s3repo, 'verify', '--read-data', '--dry-run'], env)).seconds);
        rows.push({ measure: 'aws s3 cp download (baseline)', seconds: awsDown, MBps: mbps(stored, awsDown), target: '' });
        rows.push({
          measure: 'verify --read-data, S3 server',
          seconds: verifyRead,
          MBps: mbps(stored, verifyRead),
          baseline: 'aws s3 cp down',
          ratio: awsDown / verifyRead,
          target: '>= 0.8x',
        });
      } finally {
        await server.stop();
      }
    } else log(`${AWS} not found (apt-get install awscli): the verify row is skipped`);
    return rows;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function renderScanBench(rows: ScanBenchRow[]): string {
  const f = (x: number | undefined, digits = 2): string => (x === undefined ? '' : x.toFixed(digits));
  return table(
    ['measure', 'seconds', 'MB/s', 'baseline', 'ratio', 'target', 'note'],
    rows.map((r) => [r.measure, f(r.seconds, 3), f(r.MBps, 0), r.baseline ?? '', f(r.ratio), r.target, r.note ?? '']),
  );
}
