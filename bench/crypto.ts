// `npm run bench -- crypto [--json] [--size 1GiB] [--s3-size 256MiB] [--runs 3]`: encryption and
// compression on (the default: AES-256-GCM, zstd level 1) against both off
// (`init --insecure-no-encryption --compression off`), measured in the same run through the real
// CLI (child processes), on the mixed benchmark image (70% random, 20% zero, 10% repeated regions):
//
//  - full backup, restore (every region verified) and scan of an unchanged disk, local store and
//    the S3 test server (s3rver): throughput on as a ratio of off (targets: backup and restore
//    >= 0.85, scan >= 0.90);
//  - stored bytes of an image of 50% text/log data, 20% zeros and 30% random, as a share of its
//    non-zero bytes (target <= 55%);
//  - key derivation: scrypt with the parameters new keys get (target <= 1 s).

import { randomFillSync } from 'node:crypto';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/cli/units.js';
import { seededRandom } from '../src/demo/sample-image.js';
import { s3ServerEnv, startS3Server } from '../src/dev/s3-server.js';
import { DEFAULT_KDF, passwordKey } from '../src/repo/key-files.js';
import { table } from './harness.js';
import { REGION, cdp, medianOf, run, writeImage } from './workload.js';

export interface CryptoBenchRow {
  measure: string;
  store: string;
  off: number;
  on: number;
  /** Throughput on / off (time off / time on), or the share measured. */
  ratio: number;
  target: string;
  note?: string;
}

const MODES = {
  off: ['--insecure-no-encryption', '--compression', 'off'],
  on: [],
} as const;

/** 50% text (log lines), 20% zeros, 30% random, region by region in a seeded order. */
async function writeTextImage(path: string, size: number, seed: number): Promise<number> {
  const rand = seededRandom(seed);
  const file = await open(path, 'w');
  const region = Buffer.alloc(REGION);
  let line = 0;
  let nonZero = 0;
  try {
    for (let offset = 0; offset < size; offset += REGION) {
      const roll = rand();
      if (roll < 0.5) {
        let at = 0;
        while (at < REGION) {
          const n = line++;
          at += region.write(
            `2026-12-07T${String(n % 24).padStart(2, '0')}:${String(n % 60).padStart(2, '0')}:${String((n * 7) % 60).padStart(2, '0')}.${String(n % 1000).padStart(3, '0')}Z db${n % 5} postgres[${2000 + (n % 313)}]: LOG:  duration: ${(n * 37) % 10000}.${n % 1000} ms  statement: SELECT * FROM orders WHERE id = ${n * 7919 % 1000003}\n`,
            at,
            'latin1',
          );
        }
      } else if (roll < 0.7) region.fill(0);
      else randomFillSync(region);
      const length = Math.min(REGION, size - offset);
      if (roll >= 0.5 && roll < 0.7) continue; // a hole: zeros
      nonZero += length;
      await file.write(region, 0, length, offset);
    }
    await file.truncate(size);
  } finally {
    await file.close();
  }
  return nonZero;
}

export async function runCryptoBench(argv: string[], log: (line: string) => void): Promise<CryptoBenchRow[]> {
  const value = (name: string, fallback: string): string => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : fallback;
  };
  const size = parseSize(value('--size', '1GiB'), '--size');
  const s3Size = parseSize(value('--s3-size', '256MiB'), '--s3-size');
  const runs = Number(value('--runs', '3'));
  const dir = await mkdtemp(join(tmpdir(), 'cdp-bench-crypto-'));
  const rows: CryptoBenchRow[] = [];
  const env: NodeJS.ProcessEnv = { ...process.env, CDP_S3_PASSWORD: 'cdp-s3 bench password' };
  delete env['CDP_S3_INSECURE_TEST_KDF'];
  try {
    // Every command on an encrypted repository derives its key once (a constant, not a rate):
    // the rows say the ratio with it and without it.
    const kdf = await medianOf(runs, async () => {
      const start = process.hrtime.bigint();
      await passwordKey('cdp-s3 bench password', Buffer.alloc(32, 1), DEFAULT_KDF);
      return Number(process.hrtime.bigint() - start) / 1e9;
    });
    const image = join(dir, 'disk.img');
    log(`writing a ${size}-byte mixed image…`);
    await writeImage(image, size, 1);
    await run('dd', [`if=${image}`, 'of=/dev/null', 'bs=16M', 'status=none']);

    /** Backup, restore and scan times (medians) of one mode against one store. */
    const measure = async (mode: keyof typeof MODES, repoOf: (i: number) => string, source: string, storeEnv: NodeJS.ProcessEnv) => {
      let repo = '';
      const backup = await medianOf(runs, async (i) => {
        repo = repoOf(i);
        await rm(repo, { recursive: true, force: true }).catch(() => undefined);
        await cdp(['--repo', repo, 'init', '--from', source, ...MODES[mode]], storeEnv);
        await run('sync');
        return (await cdp(['--repo', repo, 'backup', source], storeEnv)).seconds;
      });
      const target = join(dir, `restored-${mode}.img`);
      const restore = await medianOf(runs, async () => {
        await rm(target, { force: true });
        await run('sync');
        return (await cdp(['--repo', repo, 'restore', '--at', 'latest', '--to', target], storeEnv)).seconds;
      });
      await run('cmp', ['-s', source, target]);
      await rm(target, { force: true });
      const scan = await medianOf(runs, async () => (await cdp(['--repo', repo, 'scan', source], storeEnv)).seconds);
      return { backup, restore, scan };
    };
    const compare = (store: string, off: Awaited<ReturnType<typeof measure>>, on: Awaited<ReturnType<typeof measure>>, bytes: number): void => {
      const mb = (s: number): string => `${(bytes / s / 1e6).toFixed(0)} MB/s`;
      const note = (o: number, n: number): string => `${mb(o)} → ${mb(n)}; ${(o / (n - kdf)).toFixed(2)} without the key derivation`;
      rows.push({ measure: 'full backup', store, off: off.backup, on: on.backup, ratio: off.backup / on.backup, target: '>= 0.85', note: note(off.backup, on.backup) });
      rows.push({ measure: 'restore (verified)', store, off: off.restore, on: on.restore, ratio: off.restore / on.restore, target: '>= 0.85', note: note(off.restore, on.restore) });
      rows.push({ measure: 'scan, disk unchanged', store, off: off.scan, on: on.scan, ratio: off.scan / on.scan, target: '>= 0.90', note: note(off.scan, on.scan) });
    };

    log('local store: off, then on…');
    const localOff = await measure('off', (i) => join(dir, `off-${i}`), image, env);
    const localOn = await measure('on', (i) => join(dir, `on-${i}`), image, env);
    compare('local', localOff, localOn, size);
    for (let i = 0; i < runs; i++) await rm(join(dir, `off-${i}`), { recursive: true, force: true }).then(() => rm(join(dir, `on-${i}`), { recursive: true, force: true }));

    log('S3 server (s3rver): off, then on…');
    const s3image = join(dir, 's3disk.img');
    await writeImage(s3image, s3Size, 2);
    const server = await startS3Server({ buckets: ['bench'], directory: join(dir, 's3') });
    const s3env: NodeJS.ProcessEnv = { ...env, ...s3ServerEnv(server), AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
    delete s3env['AWS_CA_BUNDLE'];
    try {
      const s3Off = await measure('off', (i) => `s3://bench/off-${i}`, s3image, s3env);
      const s3On = await measure('on', (i) => `s3://bench/on-${i}`, s3image, s3env);
      compare('s3rver', s3Off, s3On, s3Size);
    } finally {
      await server.stop();
    }

    log('stored bytes of the 50% text, 20% zero, 30% random image…');
    const text = join(dir, 'text.img');
    const nonZero = await writeTextImage(text, Math.min(size, 512 * 1024 * 1024), 3);
    const stored: Record<string, number> = {};
    for (const mode of ['off', 'on'] as const) {
      const repo = join(dir, `text-${mode}`);
      await cdp(['--repo', repo, 'init', '--from', text, ...MODES[mode]], env);
      stored[mode] = Number((await cdp(['--repo', repo, 'backup', text], env)).json['bytesStored']);
    }
    rows.push({ measure: 'stored bytes / non-zero bytes, 50% text', store: 'local', off: stored['off']! / nonZero, on: stored['on']! / nonZero, ratio: stored['on']! / nonZero, target: '<= 0.55' });

    rows.push({ measure: `key derivation (scrypt N=2^${Math.log2(DEFAULT_KDF.n)}, r=${DEFAULT_KDF.r})`, store: '', off: 0, on: kdf, ratio: kdf, target: '<= 1 s' });
    return rows;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export function renderCryptoBench(rows: CryptoBenchRow[]): string {
  return table(
    ['measure', 'store', 'off', 'on', 'ratio', 'target', 'note'],
    rows.map((r) => [r.measure, r.store, r.off.toFixed(3), r.on.toFixed(3), r.ratio.toFixed(2), r.target, r.note ?? '']),
  );
}
