// bench object-lock: what S3 Object Lock costs, on Ceph RGW (a one-node cluster on loopback,
// started here), against the same work on a bucket without it, in the same run.
//
// - A base backup of a --size image (default 128 MiB, random data in 1 MiB regions), then
//   --points small points (one 4 KiB write each, `backup --changed`): seconds, and requests
//   and bytes per point, with and without Object Lock.
// - prune at once (nothing due), then prune half the lock days later (the extension is due):
//   requests of each, and objects extended per second.
// - verify's retention check: objects read per second.
//
// Run: npm run bench -- object-lock [--size 128MiB] [--points 50] [--runs 3]

import { randomBytes } from 'node:crypto';
import { mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { parseSize } from '../src/cli/units.js';
import { backup } from '../src/core/backup.js';
import { init } from '../src/core/init.js';
import { prune } from '../src/core/prune.js';
import { checkRetention, extendRetention } from '../src/core/retention.js';
import { packKey } from '../src/repo/keys.js';
import pLimit from 'p-limit';
import { cephRgwEnv, startCephRgw } from '../src/dev/ceph-rgw.js';
import { Repository } from '../src/repo/repository.js';
import { DAY_MS } from '../src/repo/retaining-store.js';
import { unlockStore } from '../src/repo/unlock.js';
import { openStore } from '../src/store/open.js';
import { RequestCountingStore } from './counting-store.js';
import { median, option, table } from './harness.js';

export interface ObjectLockRow {
  measure: string;
  plain: string;
  locked: string;
  ratio: string;
}

const REGION = 1024 * 1024;
const DAYS = 30;

interface Run {
  baseSeconds: number;
  pointSeconds: number;
  requestsPerPoint: number;
  bytesPerPoint: number;
  pruneRequests: number;
  pruneSeconds: number;
  extendSeconds: number;
  extended: number;
  extendRequests: number;
  checkSeconds: number;
  checked: number;
  /** PUTs of MANY 1 KiB objects per second (16 at a time). */
  manyPutsPerSecond: number;
  /** Locked: retention requests per second of an extension of those objects. */
  retainsPerSecond: number;
}

/** Objects of the extension-rate phase. */
const MANY = 2000;

async function once(bucket: string, endpoint: string, source: string, size: number, points: number, locked: boolean): Promise<Run> {
  const url = `s3://${bucket}/run-${Date.now()}-${Math.random().toString(16).slice(2, 8)}`;
  const counting = new RequestCountingStore(openStore(url, { endpoint }));
  await init({ store: counting, size, regionSize: REGION, ...(locked ? { objectLock: { mode: 'governance', days: DAYS } } : {}) });
  const store = await unlockStore(counting, undefined);
  let t = performance.now();
  await backup({ store, source });
  const baseSeconds = (performance.now() - t) / 1000;
  const file = await open(source, 'r+');
  counting.reset();
  t = performance.now();
  try {
    for (let i = 0; i < points; i++) {
      const at = ((i * 7919) % (size / 4096)) * 4096;
      await file.write(randomBytes(4096), 0, 4096, at);
      await backup({ store, source, changed: [{ offset: at, length: 4096 }] });
    }
  } finally {
    await file.close();
  }
  const pointSeconds = (performance.now() - t) / 1000 / points;
  const perPoint = counting.total();
  const requestsPerPoint = (perPoint.puts + perPoint.gets + perPoint.heads + perPoint.listPages + perPoint.deletes) / points;
  const bytesPerPoint = perPoint.putBytes / points;
  counting.reset();
  t = performance.now();
  await prune({ store, graceMs: 0 });
  const pruneSeconds = (performance.now() - t) / 1000;
  const p = counting.total();
  const pruneRequests = p.puts + p.gets + p.heads + p.listPages + p.deletes + p.retains;
  counting.reset();
  t = performance.now();
  const later = Date.now() + (DAYS / 2) * DAY_MS + 60_000;
  const extension = await prune({ store, graceMs: 0, clock: () => later });
  const extendSeconds = (performance.now() - t) / 1000;
  const e = counting.total();
  const extendRequests = e.puts + e.gets + e.heads + e.listPages + e.deletes + e.retains;
  let checkSeconds = 0;
  let checked = 0;
  if (locked) {
    t = performance.now();
    const result = await checkRetention(await Repository.open(store), { mode: 'governance', days: DAYS }, { clock: () => later, candidates: new Set() });
    checkSeconds = (performance.now() - t) / 1000;
    checked = result.checked;
    if (result.atRisk.length > 0) throw new Error(`${result.atRisk.length} objects at risk after the extension`);
  }
  // The extension's rate, on many objects: 1 KiB packs put 16 at a time (timed: the baseline),
  // then (Object Lock) every retained object's retention set once more, at the next due time.
  const limit = pLimit(16);
  t = performance.now();
  await Promise.all(Array.from({ length: MANY }, (_, i) => limit(() => store.put(packKey(1, (0x10000000 + i).toString(16)), randomBytes(1024)))));
  const manyPutsPerSecond = MANY / ((performance.now() - t) / 1000);
  let retainsPerSecond = 0;
  if (locked) {
    const repo = await Repository.open(store);
    counting.reset();
    t = performance.now();
    await extendRetention(repo, { mode: 'governance', days: DAYS }, { unneeded: new Set(), clock: () => later + (DAYS / 2 + 1) * DAY_MS, dryRun: false });
    retainsPerSecond = counting.total().retains / ((performance.now() - t) / 1000);
  }
  return { manyPutsPerSecond, retainsPerSecond, baseSeconds, pointSeconds, requestsPerPoint, bytesPerPoint, pruneRequests, pruneSeconds, extendSeconds, extended: extension.retention?.extended ?? 0, extendRequests, checkSeconds, checked };
}

export async function runObjectLockBench(argv: string[], log: (line: string) => void): Promise<ObjectLockRow[]> {
  const size = parseSize(option(argv, '--size', '128MiB'), '--size');
  const points = Number(option(argv, '--points', '50'));
  const runs = Number(option(argv, '--runs', '3'));
  const dir = await mkdtemp('/tmp/cdp-bench-lock-');
  log('starting Ceph RGW…');
  const rgw = await startCephRgw({ buckets: ['plain'] });
  const saved = { ...process.env };
  try {
    Object.assign(process.env, cephRgwEnv(rgw));
    delete process.env['AWS_CA_BUNDLE'];
    const client = new S3Client({ endpoint: rgw.endpoint, region: 'us-east-1', forcePathStyle: true });
    await client.send(new CreateBucketCommand({ Bucket: 'locked', ObjectLockEnabledForBucket: true }));
    client.destroy();
    const source = join(dir, 'disk.img');
    await writeFile(source, randomBytes(size));
    const plainRuns: Run[] = [];
    const lockedRuns: Run[] = [];
    for (let i = 0; i < runs; i++) {
      for (const locked of [false, true]) {
        log(`run ${i + 1}/${runs}, ${locked ? 'Object Lock' : 'no Object Lock'}…`);
        (locked ? lockedRuns : plainRuns).push(await once(locked ? 'locked' : 'plain', rgw.endpoint, source, size, points, locked));
      }
    }
    const m = (list: Run[], f: (r: Run) => number): number => median(list.map(f));
    const row = (measure: string, f: (r: Run) => number, format: (v: number) => string, ratio = true): ObjectLockRow => {
      const a = m(plainRuns, f);
      const b = m(lockedRuns, f);
      return { measure, plain: format(a), locked: format(b), ratio: ratio && a > 0 ? (b / a).toFixed(2) : '' };
    };
    const s = (v: number): string => `${v.toFixed(2)} s`;
    const n = (v: number): string => v.toFixed(1);
    return [
      row(`base backup of ${size / REGION} MiB (s)`, (r) => r.baseSeconds, s),
      row('4 KiB point (s)', (r) => r.pointSeconds, (v) => `${(v * 1000).toFixed(0)} ms`),
      row('requests per 4 KiB point', (r) => r.requestsPerPoint, n),
      row('bytes uploaded per 4 KiB point', (r) => r.bytesPerPoint, (v) => `${(v / 1024).toFixed(1)} KiB`),
      row('requests of a prune with nothing due', (r) => r.pruneRequests, n),
      row('seconds of a prune with nothing due', (r) => r.pruneSeconds, s),
      row(`requests of a prune ${DAYS / 2} days on (extension due)`, (r) => r.extendRequests, n),
      row('objects extended by it', (r) => r.extended, n, false),
      row(`seconds of the prune ${DAYS / 2} days on`, (r) => r.extendSeconds, s),
      { measure: `extension of ${MANY}+ objects: PutObjectRetention/s (no Object Lock column: PUTs of 1 KiB/s, 16 at a time)`, plain: n(m(plainRuns, (r) => r.manyPutsPerSecond)), locked: n(m(lockedRuns, (r) => r.retainsPerSecond)), ratio: (m(lockedRuns, (r) => r.retainsPerSecond) / m(plainRuns, (r) => r.manyPutsPerSecond)).toFixed(2) },
      row('verify: retention read per second', (r) => (r.checkSeconds > 0 ? r.checked / r.checkSeconds : 0), n, false),
    ];
  } finally {
    process.env = saved;
    await rgw.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

export function renderObjectLockBench(rows: ObjectLockRow[]): string {
  return table(
    ['measure', 'no Object Lock', 'Object Lock', 'ratio'],
    rows.map((r) => [r.measure, r.plain, r.locked, r.ratio]),
  );
}
