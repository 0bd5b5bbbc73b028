// Bad input and damaged repositories through the command line, against the local directory
// store and a real S3 server (s3rver) on 127.0.0.1. Every failure must be exactly one line on
// stderr ("cdp-s3: " + the problem and the fix), its documented exit code (EXIT), and leave
// nothing lost or half-written: the repository holds the same objects, still lists the same
// points in time and restores them bit-exact, and no target or '.cdp-s3-partial' file is left.

import { execFileSync, spawn } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import { chmod, cp, mkdir, mkdtemp, open, readdir, readFile, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { init } from '../../src/core/init.js';
import { type PageRef, type RootContext, decodeDeltaRoot, decodeSpanRoot, encodeDeltaRoot, encodeSpanRoot } from '../../src/repo/run-codec.js';
import { decodeConfig } from '../../src/repo/config.js';
import { openStore } from '../../src/store/open.js';
import { s3ServerEnv } from '../../src/dev/s3-server.js';
import { CLI_ENTRY, type CliResult, cli, spawnCli } from '../helpers/cli.js';
import { makeImage, mutateImage } from '../helpers/images.js';
import { requireOrSkip } from '../helpers/requirements.js';
import { waitUntil } from '../helpers/wait.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { FsRawObjects, type RawObjects, S3RawObjects, flipBodyByte, snapshot, versionOf, withVersion } from '../helpers/raw-objects.js';

const REGION = 64 * 1024;
const BUCKET = 'bad';
/** A second bucket, which repositories in BUCKET must never reach. */
const OTHER_BUCKET = 'other';
const fixture = useS3Fixture('bad', [BUCKET, OTHER_BUCKET]);

let counter = 0;
/** A fresh, empty directory for one test's files. */

/**
 * A copy of the built CLI (dist/, build/ and the modules a local repository needs) under `dir`,
 * for running as another user: the checkout itself may sit in a directory only its owner can
 * enter (CI clones into a mktemp directory, mode 700). Returns the entry point.
 */
async function cliCopyForEveryone(dir: string): Promise<string> {
  const root = join(CLI_ENTRY, '../../../..');
  for (const part of ['dist', 'build', 'package.json']) await cp(join(root, part), join(dir, part), { recursive: true });
  for (const module of ['commander', 'msgpackr', 'p-limit', 'yocto-queue', 'lru-cache', 'fs-ext', 'nan', '@mongodb-js']) {
    await cp(join(root, 'node_modules', module), join(dir, 'node_modules', module), { recursive: true, dereference: true });
  }
  return join(dir, 'dist/src/cli/main.js');
}

async function freshDir(name: string): Promise<string> {
  const path = join(fixture.dir, `${name}-${++counter}`);
  await mkdir(path, { recursive: true });
  return path;
}

type Kind = 'fs' | 's3';

interface Round {
  seq: number;
  time: string;
  image: Buffer;
}

interface Fixture {
  kind: Kind;
  /** --repo value. */
  repo: string;
  raw: RawObjects;
  /** The source image as backed up last. */
  source: string;
  rounds: Round[];
  work: string;
}

function rawFor(kind: Kind, repo: string, prefix: string): RawObjects {
  if (kind === 'fs') return new FsRawObjects(repo);
  const raw = new S3RawObjects(BUCKET, prefix, fixture.server.endpoint);
  fixture.onTeardown(() => raw.destroy());
  return raw;
}

/**
 * A repository with `rounds` points in time of a small image (64 KiB regions), made with the
 * library's init (the CLI has no --span-fanout) and the CLI's backup.
 */
async function makeRepo(kind: Kind, name: string, options: { rounds?: number; size?: number; spanFanout?: number; image?: Buffer } = {}): Promise<Fixture> {
  const work = await freshDir(`${kind}-${name}`);
  const prefix = `${name}-${counter}`;
  const repo = kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/${prefix}`;
  const image = options.image ?? makeImage({ size: options.size ?? 1024 * 1024 + 4096 + 7, regionSize: REGION, seed: counter });
  const source = join(work, 'disk.img');
  await writeFile(source, image);
  await init({ store: openStore(repo), from: source, regionSize: REGION, spanFanout: options.spanFanout ?? 2 });
  const rounds: Round[] = [];
  for (let round = 0; round < (options.rounds ?? 3); round++) {
    if (round > 0) {
      mutateImage(image, 3, 1000 * counter + round);
      await writeFile(source, image);
    }
    const result = await cli('--repo', repo, '--json', 'backup', source);
    expect(result.code, result.stderr).toBe(EXIT.ok);
    const report = JSON.parse(result.stdout) as { seq: number; time: string };
    rounds.push({ seq: report.seq, time: report.time, image: Buffer.from(image) }); // backup makes each time later than the last
  }
  return { kind, repo, raw: rawFor(kind, repo, prefix), source, rounds, work };
}

/** Exactly one line "cdp-s3: ..." on stderr matching every pattern, nothing on stdout, and the exit code. */
function expectFailure(result: CliResult, code: number, ...patterns: RegExp[]): void {
  const lines = result.stderr.split('\n');
  if (lines.at(-1) === '') lines.pop();
  expect(lines, `stderr: ${result.stderr}`).toHaveLength(1);
  expect(lines[0]).toMatch(/^cdp-s3: \S/);
  for (const pattern of patterns) expect(lines[0]).toMatch(pattern);
  expect(result.code, result.stderr).toBe(code);
  expect(result.stdout).toBe('');
}

async function exists(path: string): Promise<boolean> {
  return stat(path).then(
    () => true,
    () => false,
  );
}

async function partials(path: string): Promise<string[]> {
  return (await readdir(path)).filter((name) => name.includes('.cdp-s3-partial'));
}

/** The target was not created and no temporary restore file is left beside it. */
async function expectNoTarget(target: string): Promise<void> {
  expect(await exists(target), `${target} must not exist`).toBe(false);
  expect(await partials(join(target, '..'))).toEqual([]);
}

async function seqsOf(repo: string): Promise<number[]> {
  const result = await cli('--repo', repo, '--json', 'log');
  expect(result.code, result.stderr).toBe(EXIT.ok);
  return (JSON.parse(result.stdout) as Array<{ seq: number }>).map((e) => e.seq);
}

async function expectRestores(fx: Fixture, round: Round): Promise<void> {
  const out = await freshDir('restore');
  const target = join(out, 'restored.img');
  const result = await cli('--repo', fx.repo, 'restore', '--at', String(round.seq), '--to', target);
  expect(result.code, result.stderr).toBe(EXIT.ok);
  expect((await readFile(target)).equals(round.image), `point in time ${round.seq} restores bit-exact`).toBe(true);
  expect(await partials(out)).toEqual([]);
  await rm(out, { recursive: true, force: true });
}

/** The repository still lists the same points in time and restores each bit-exact. */
async function expectIntact(fx: Fixture): Promise<void> {
  expect(await seqsOf(fx.repo)).toEqual(fx.rounds.map((r) => r.seq));
  for (const round of fx.rounds) await expectRestores(fx, round);
}

const envelopeDamage = [
  { name: 'a flipped byte (checksum mismatch)', damage: (b: Buffer) => flipBodyByte(b), message: /checksum mismatch: the object is corrupt or truncated/ },
  { name: 'truncation to half its size', damage: (b: Buffer) => b.subarray(0, Math.floor(b.length / 2)), message: /checksum mismatch: the object is corrupt or truncated/ },
  { name: 'truncation to 20 bytes', damage: (b: Buffer) => b.subarray(0, 20), message: /only 20 bytes: truncated or not a cdp-s3 object/ },
  {
    name: 'an unknown format version with a valid checksum',
    damage: (b: Buffer) => withVersion(b, 7),
    message: /format version 7 is not supported \(this cdp-s3 reads version 6\)/,
  },
  // The version is checked before the trailer; either way this must be an integrity failure.
  { name: 'an unknown format version with the old checksum', damage: (b: Buffer) => withVersion(b, 7, false), message: /format version 7|checksum mismatch/ },
] as const;

/** Replaces `key` with damaged bytes for the duration of `body`, then puts the original back. */
async function withDamaged(fx: Fixture, key: string, damage: (b: Buffer) => Buffer, body: () => Promise<void>): Promise<void> {
  const original = await fx.raw.get(key);
  const before = await snapshot(fx.raw);
  const damaged = damage(Buffer.from(original));
  expect(damaged.equals(original)).toBe(false);
  await fx.raw.put(key, damaged);
  try {
    await body();
    // The failing commands wrote nothing: every other object is as it was.
    const after = await snapshot(fx.raw);
    delete after[key];
    const expected = { ...before };
    delete expected[key];
    expect(after).toEqual(expected);
  } finally {
    await fx.raw.put(key, original);
  }
  expect(await snapshot(fx.raw)).toEqual(before);
}

for (const kind of ['fs', 's3'] as const) {
  describe(`bad input (${kind} store)`, () => {
    let fx: Fixture;
    beforeAll(async () => {
      fx = await makeRepo(kind, 'shared');
    });

    it('log --since/--last/--summary, prune --grace, forget and protect --keep-* out of range, prune on a damaged delta: one line, nothing changed', async () => {
      const before = await snapshot(fx.raw);
      expectFailure(await cli('--repo', fx.repo, 'log', '--last', '0'), EXIT.usage, /^cdp-s3: --last "0": give a whole number of points, at least 1$/);
      expectFailure(await cli('--repo', fx.repo, 'log', '--summary', 'week'), EXIT.usage, /^cdp-s3: --summary "week": give hour or day$/);
      expectFailure(await cli('--repo', fx.repo, 'log', '--since', 'yesterday'), EXIT.usage, /--since "yesterday" is not a point in time/);
      expectFailure(await cli('--repo', fx.repo, 'prune', '--grace', 'soon'), EXIT.usage, /^cdp-s3: --grace "soon" is not a duration/);
      expectFailure(await cli('--repo', fx.repo, 'forget'), EXIT.usage, /^cdp-s3: an empty retention policy would keep only the newest point: pass at least one --keep-last/);
      expectFailure(await cli('--repo', fx.repo, 'forget', '--keep-daily', '0'), EXIT.usage, /^cdp-s3: --keep-daily "0": give a whole number, at least 1$/);
      expectFailure(await cli('--repo', fx.repo, 'forget', '--keep-within', 'ages'), EXIT.usage, /^cdp-s3: --keep-within "ages" is not a duration/);
      expectFailure(await cli('--repo', fx.repo, 'forget', '--keep-last', '1', '--keep-seq', '999'), EXIT.noPointInTime, /^cdp-s3: --keep-seq 999: no such point in time/);
      expectFailure(await cli('--repo', fx.repo, 'protect', fx.source, '--prune-every', '1h'), EXIT.usage, /^cdp-s3: --prune-every applies a retention policy: give it one with --keep-last/);
      const last = await cli('--repo', fx.repo, '--json', 'log', '--last', '1');
      expect(last.code, last.stderr).toBe(EXIT.ok);
      expect((JSON.parse(last.stdout) as Array<{ seq: number }>).map((e) => e.seq)).toEqual([fx.rounds.at(-1)!.seq]);
      const key = (await fx.raw.keys('deltas/'))[0]!;
      await withDamaged(fx, key, flipBodyByte, async () => {
        expectFailure(await cli('--repo', fx.repo, 'prune', '--grace', '0s'), EXIT.integrity, /^cdp-s3: prune: deleted nothing: delta 0+1 \(deltas\/0+1\) cannot be read/);
      });
      expect(await snapshot(fx.raw)).toEqual(before);
    });

    it('backup, log and restore on an empty location: repository not initialized', async () => {
      const work = await freshDir(`${kind}-empty`);
      const empty = kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/empty-${counter}`;
      if (kind === 'fs') await mkdir(empty);
      const raw = rawFor(kind, empty, `empty-${counter}`);
      const source = join(work, 'disk.img');
      await writeFile(source, makeImage({ size: 256 * 1024, regionSize: REGION, seed: 5 }));
      const target = join(work, 'restored.img');
      for (const args of [['backup', source], ['log'], ['restore', '--at', 'latest', '--to', target]]) {
        const result = await cli('--repo', empty, ...args);
        expectFailure(result, EXIT.repository, /no repository at /, /run `cdp-s3 init --repo .* --from SOURCE` first/);
      }
      expect(await raw.keys()).toEqual([]);
      await expectNoTarget(target);
      if (kind === 'fs') {
        // A directory that does not exist at all is not initialized either, and is not created.
        const missing = join(work, 'no-such-dir');
        expectFailure(await cli('--repo', missing, 'log'), EXIT.repository, /no repository at /);
        expectFailure(await cli('--repo', missing, 'backup', source), EXIT.repository, /no repository at /);
        expect(await exists(missing)).toBe(false);
      }
    });

    if (kind === 'fs') it('protect and serve --listen :PORT: refused alike (protect bound every interface); a host is required', async () => {
      const before = await snapshot(fx.raw);
      const message = /^cdp-s3: --listen ":0" is not an address: use HOST:PORT or \[IPV6\]:PORT, e\.g\. 127\.0\.0\.1:10809 or \[::1\]:10809 \(a host is required: 0\.0\.0\.0:0 listens on every interface\)$/;
      const drl = join(await freshDir('listen'), 'disk.drl');
      expectFailure(await cli('--repo', fx.repo, 'protect', fx.source, '--drl', drl, '--listen', ':0'), EXIT.usage, message);
      expectFailure(await cli('--repo', fx.repo, 'serve', '--at', 'latest', '--listen', ':0'), EXIT.usage, message);
      expect(await exists(drl)).toBe(false);
      expect(await snapshot(fx.raw)).toEqual(before);
    });

    if (kind === 'fs') it('init --size beyond what a volume can hold: usage, naming the maximum for the region size; nothing written', async () => {
      const work = await freshDir('too-large');
      const repo = join(work, 'repo');
      expectFailure(
        await cli('--repo', repo, 'init', '--size', '1000TiB'),
        EXIT.usage,
        /^cdp-s3: a volume of 1000 TiB in 1 MiB regions needs 1048576000 regions; at most 67108864 fit \(64 TiB with 1 MiB regions\): choose larger regions \(--region-size 16MiB holds up to 1024 TiB\)$/,
      );
      expectFailure(await cli('--repo', repo, 'init', '--size', String(64 * 2 ** 40 + 1)), EXIT.usage, /needs 67108865 regions; at most 67108864 fit \(64 TiB with 1 MiB regions\)/);
      expectFailure(await cli('--repo', repo, 'init', '--size', '64TiB', '--region-size', '64KiB'), EXIT.usage, /at most 67108864 fit \(4 TiB with 64 KiB regions\)/);
      expectFailure(await cli('--repo', repo, 'init', '--size', '2000TiB', '--region-size', '16MiB'), EXIT.usage, /\(1024 TiB with 16 MiB regions\): this version cannot protect it as one volume$/);
      expect(await exists(repo)).toBe(false);
      // The largest volume for the region size is accepted.
      const largest = await cli('--repo', repo, '--json', 'init', '--size', '64TiB');
      expect(largest.code, largest.stderr).toBe(EXIT.ok);
      expect((JSON.parse(largest.stdout) as { volumeSize: number }).volumeSize).toBe(64 * 2 ** 40);
    });

    if (kind === 'fs') it('init --block-size that is no power of two, below 512 bytes or above the region size: usage, nothing written', async () => {
      const work = await freshDir('block-size');
      const repo = join(work, 'repo');
      expectFailure(await cli('--repo', repo, 'init', '--size', '1GiB', '--block-size', '3000'), EXIT.usage, /^cdp-s3: block size must be a power of two from 512 bytes to the region size \(1048576\), got 3000$/);
      expectFailure(await cli('--repo', repo, 'init', '--size', '1GiB', '--block-size', '256'), EXIT.usage, /block size must be a power of two from 512 bytes/);
      expectFailure(await cli('--repo', repo, 'init', '--size', '1GiB', '--block-size', '2MiB'), EXIT.usage, /to the region size \(1048576\), got 2097152$/);
      expectFailure(await cli('--repo', repo, 'init', '--size', '1GiB', '--block-size', 'lots'), EXIT.usage, /--block-size/);
      expect(await exists(repo)).toBe(false);
      const ok = await cli('--repo', repo, '--json', 'init', '--size', '1GiB', '--block-size', '64KiB');
      expect(ok.code, ok.stderr).toBe(EXIT.ok);
      expect(JSON.parse(ok.stdout)).toMatchObject({ blockSize: 65536, regionSize: 1048576 });
    });

    it('init twice: refused, the repository as it was', async () => {
      const before = await snapshot(fx.raw);
      for (const args of [['--from', fx.source], ['--size', '1MiB']]) {
        expectFailure(await cli('--repo', fx.repo, 'init', ...args), EXIT.repository, /already holds a repository; use it as it is, or choose another --repo/);
      }
      expect(await snapshot(fx.raw)).toEqual(before);
      await expectIntact(fx);
    });

    it('source missing, a directory, a character device, or of another size: refused, nothing written', async () => {
      const before = await snapshot(fx.raw);
      const work = await freshDir(`${kind}-sources`);
      const missing = join(work, 'missing.img');
      expectFailure(await cli('--repo', fx.repo, 'backup', missing), EXIT.volume, /missing\.img does not exist; check the path/);
      expectFailure(await cli('--repo', fx.repo, 'backup', work), EXIT.volume, new RegExp(`${work} is a directory, not a disk: give an image file or a block device`));
      expectFailure(await cli('--repo', fx.repo, 'backup', '/dev/null'), EXIT.volume, /\/dev\/null is a character device, not a disk: give an image file or a block device/);
      // A path through a file (ENOTDIR) cannot be opened either.
      expectFailure(await cli('--repo', fx.repo, 'backup', join(fx.source, 'x')), EXIT.volume, /disk\.img\/x cannot be opened \(ENOTDIR\)/);

      const other = join(work, 'other.img');
      const size = fx.rounds[0]!.image.length;
      for (const otherSize of [size - 1, size + REGION]) {
        await writeFile(other, makeImage({ size: otherSize, regionSize: REGION, seed: 3 }));
        expectFailure(
          await cli('--repo', fx.repo, 'backup', other),
          EXIT.volume,
          new RegExp(`other\\.img is ${otherSize} bytes but the repository's volume is ${size} bytes: back up the same disk, or init a new repository`),
        );
      }
      expect(await snapshot(fx.raw)).toEqual(before);
      await expectIntact(fx);
    });

    it('init --from a missing source or a directory: refused, no repository created', async () => {
      const work = await freshDir(`${kind}-init-source`);
      const repo = kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/init-source-${counter}`;
      const raw = rawFor(kind, repo, `init-source-${counter}`);
      expectFailure(await cli('--repo', repo, 'init', '--from', join(work, 'missing.img')), EXIT.volume, /missing\.img does not exist; check the path/);
      expectFailure(await cli('--repo', repo, 'init', '--from', work), EXIT.volume, /is a directory, not a disk/);
      expect(await raw.keys()).toEqual([]);
    });

    it('init --object-lock where there is no Object Lock: the store exit code, saying why, no repository created', async () => {
      const work = await freshDir(`${kind}-init-lock`);
      const repo = kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/init-lock-${counter}`;
      const raw = rawFor(kind, repo, `init-lock-${counter}`);
      const why = kind === 'fs' ? `file://${join(work, 'repo')} is a local directory, which has no Object Lock` : /the S3 server at http:\/\/127\.0\.0\.1:\d+ does not implement Object Lock/.source;
      expectFailure(
        await cli('--repo', repo, 'init', '--from', fx.source, '--object-lock', 'compliance', '--lock-days', '7'),
        EXIT.store,
        new RegExp(`cannot use --object-lock: ${kind === 'fs' ? why.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&') : why}; use a bucket created with Object Lock enabled`),
      );
      expect(await raw.keys()).toEqual([]);
    });

    it('a FIFO or a socket as the source of backup, init --from, scan or protect: refused before opening it (open() of a FIFO blocks)', async () => {
      const before = await snapshot(fx.raw);
      const work = await freshDir(`${kind}-not-disks`);
      const fifo = join(work, 'pipe');
      execFileSync('mkfifo', [fifo]);
      const socketPath = join(work, 'socket');
      const server = createServer();
      await new Promise<void>((resolve) => server.listen(socketPath, resolve));
      try {
        const fresh = kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/not-disks-${counter}`;
        const raw = rawFor(kind, fresh, `not-disks-${counter}`);
        for (const [path, what] of [[fifo, 'a FIFO \\(named pipe\\)'], [socketPath, 'a socket']] as const) {
          const message = new RegExp(`${path} is ${what}, not a disk: give an image file or a block device`);
          expectFailure(await cli('--repo', fx.repo, 'backup', path), EXIT.volume, message);
          expectFailure(await cli('--repo', fx.repo, 'scan', path), EXIT.volume, message);
          expectFailure(await cli('--repo', fresh, 'init', '--from', path), EXIT.volume, message);
          const protect = await cli('--repo', fx.repo, 'protect', path, '--drl', join(work, 'p.drl'), '--listen', '127.0.0.1:0');
          expect(protect.code, protect.stderr).toBe(EXIT.volume);
          expect(protect.stderr).toMatch(message);
        }
        expect(await raw.keys()).toEqual([]);
      } finally {
        await new Promise((resolve) => server.close(resolve));
      }
      expect(await snapshot(fx.raw)).toEqual(before);
    });

    it('--at unparseable (usage), before the first point, in the future, or past the newest sequence number (no point in time)', async () => {
      const out = await freshDir(`${kind}-at`);
      const target = join(out, 'restored.img');
      const restore = (at: string): Promise<CliResult> => cli('--repo', fx.repo, 'restore', '--at', at, '--to', target);
      for (const at of ['yesterday', '2026-11-26T10:00:00', 'latest-1']) {
        expectFailure(await restore(at), EXIT.usage, /is not a point in time: give latest, a sequence number \(see cdp-s3 log\), or an ISO 8601 time with a zone/);
      }
      // Dates and times that do not exist are refused, not rolled over (Feb 30 is not March 2).
      for (const at of ['2026-13-45', '2026-02-30T00:00:00Z', '2026-11-26T24:00Z']) {
        expectFailure(await restore(at), EXIT.usage, /is not a real date and time \(.+\): give an ISO 8601 time with a zone such as 2026-11-26T10:00:00Z/);
      }
      expectFailure(await restore('0'), EXIT.usage, /--at 0: sequence numbers start at 1/);
      expectFailure(await restore('2000-01-01T00:00:00Z'), EXIT.noPointInTime, /is before the first point in time \(\d{4}-/);
      expectFailure(await restore('2999-01-01T00:00:00Z'), EXIT.noPointInTime, /is in the future; use latest for the newest point in time/);
      const past = fx.rounds.length + 1;
      expectFailure(await restore(String(past)), EXIT.noPointInTime, new RegExp(`no point in time ${past}: the newest is ${fx.rounds.length}`));
      expectFailure(await cli('--repo', fx.repo, 'restore', '--at', '99', '--dry-run'), EXIT.noPointInTime, /no point in time 99/);
      await expectNoTarget(target);
      expect(await readdir(out)).toEqual([]);
    });

    it('restore onto the disk that was backed up: refused without --force (also through a symlink), done with it', async () => {
      const own = await makeRepo(kind, 'onto-source', { rounds: 2 });
      const latest = own.rounds.at(-1)!.image;
      const link = join(own.work, 'link-to-disk.img');
      await symlink(own.source, link);
      for (const target of [own.source, link]) {
        const result = await cli('--repo', own.repo, 'restore', '--at', '1', '--to', target);
        expectFailure(result, EXIT.volume, /is the disk this repository protects; restoring onto it overwrites the live volume: pass --force if that is intended/);
        expect((await readFile(own.source)).equals(latest), 'the source is untouched').toBe(true);
        expect(await partials(own.work)).toEqual([]);
      }
      const forced = await cli('--repo', own.repo, 'restore', '--at', '1', '--to', own.source, '--force');
      expect(forced.code, forced.stderr).toBe(EXIT.ok);
      expect((await readFile(own.source)).equals(own.rounds[0]!.image)).toBe(true);
      expect(await partials(own.work)).toEqual([]);
      await expectIntact(own);
    });

    it('target exists: refused without --force and left as it was; replaced with --force', async () => {
      const out = await freshDir(`${kind}-exists`);
      const target = join(out, 'restored.img');
      await writeFile(target, 'precious');
      expectFailure(
        await cli('--repo', fx.repo, 'restore', '--at', '1', '--to', target),
        EXIT.volume,
        /restored\.img already exists; pass --force to replace it, or choose another --to/,
      );
      expect(await readFile(target, 'utf8')).toBe('precious');
      expect(await partials(out)).toEqual([]);
      const forced = await cli('--repo', fx.repo, 'restore', '--at', '1', '--to', target, '--force');
      expect(forced.code, forced.stderr).toBe(EXIT.ok);
      expect((await readFile(target)).equals(fx.rounds[0]!.image)).toBe(true);
      expect(await readdir(out)).toEqual(['restored.img']);

      // Neither a file nor a block device (a directory), and a directory that does not exist.
      expectFailure(await cli('--repo', fx.repo, 'restore', '--at', '1', '--to', out, '--force'), EXIT.volume, /is neither a file nor a block device/);
      const nowhere = join(out, 'no-such-dir', 'restored.img');
      expectFailure(await cli('--repo', fx.repo, 'restore', '--at', '1', '--to', nowhere), EXIT.volume, /no-such-dir does not exist; create it or choose another --to/);
      expect(await readdir(out)).toEqual(['restored.img']);
    });

    describe('damaged objects', () => {
      const key = {
        config: () => 'config',
        delta: () => 'deltas/0000000000000003',
        span: () => 'spans/01/0000000000000002',
      };

      it('the fixture has a span of points 1 and 2 and one pack per backup', async () => {
        const keys = await fx.raw.keys();
        expect(keys).toContain(key.span());
        expect(keys.filter((k) => k.startsWith('packs/0000000000000001-'))).toHaveLength(1);
      });

      for (const { name, damage, message } of envelopeDamage) {
        it(`config with ${name}: log, backup and restore refuse with the integrity code`, async () => {
          await withDamaged(fx, key.config(), damage, async () => {
            const out = await freshDir(`${kind}-config`);
            const target = join(out, 'restored.img');
            for (const args of [['log'], ['backup', fx.source], ['restore', '--at', 'latest', '--to', target]]) {
              expectFailure(await cli('--repo', fx.repo, ...args), EXIT.integrity, /^cdp-s3: config: /, message);
            }
            await expectNoTarget(target);
          });
        });

        it(`delta with ${name}: restore of that point and log refuse with the integrity code; the others still restore`, async () => {
          await withDamaged(fx, key.delta(), damage, async () => {
            const out = await freshDir(`${kind}-delta`);
            const target = join(out, 'restored.img');
            expectFailure(await cli('--repo', fx.repo, 'restore', '--at', '3', '--to', target), EXIT.integrity, /delta 0000000000000003: /, message);
            await expectNoTarget(target);
            // A time selector lands on the damaged delta too.
            expectFailure(await cli('--repo', fx.repo, 'restore', '--at', fx.rounds[2]!.time, '--to', target), EXIT.integrity, /delta 0000000000000003: /);
            await expectNoTarget(target);
            expectFailure(await cli('--repo', fx.repo, 'log'), EXIT.integrity, /delta 0000000000000003: /, message);
            // Points 1 and 2 do not need delta 3.
            await expectRestores(fx, fx.rounds[0]!);
            await expectRestores(fx, fx.rounds[1]!);
          });
        });

        it(`span with ${name}: replaced by the deltas it merges, restore still bit-exact`, async () => {
          await withDamaged(fx, key.span(), damage, async () => {
            await expectIntact(fx);
          });
        });
      }

      // One store suffices for a missing object: the repository layer maps 'not found' the same way for both.
      if (kind === 'fs') it('a missing delta in the middle of the chain: earlier points restore, the span over it stands in for it and later ones, log shows it', async () => {
        const path = join(fx.repo, 'deltas/0000000000000002');
        const bytes = await readFile(path);
        await rm(path);
        try {
          // Point 2 is the span of 1–2; point 3 folds delta 3 onto it; point 1 needs only delta 1.
          await expectRestores(fx, fx.rounds[0]!);
          await expectRestores(fx, fx.rounds[1]!);
          await expectRestores(fx, fx.rounds[2]!);
          const logged = await cli('--repo', fx.repo, 'log');
          expect(logged.code, logged.stderr).toBe(EXIT.ok);
          expect(logged.stdout).toContain('deltas/0000000000000002 is missing: a span stands in for it, so later points still restore');
        } finally {
          await writeFile(path, bytes);
        }
        await expectIntact(fx);
      });

      it('a delta or span naming a pack outside the repository (crafted, valid checksum): the integrity code; nothing fetched from elsewhere', async () => {
        const config = decodeConfig(await fx.raw.get('config'));
        const regionCount = Math.ceil(config.volumeSize / config.regionSize);
        const context: RootContext = { volumeId: config.volumeId, pageRegions: config.pageRegions, regionCount, pageTotal: Math.ceil(regionCount / config.pageRegions) };
        // Every page's pack table names a key outside the repository instead.
        const escaped = (pages: PageRef[]): PageRef[] =>
          pages.map((p) => ({ ...p, inline: { ...p.inline!, packs: p.inline!.packs.map((pack) => `../otherrepo/${pack}`) } }));
        const delta = decodeDeltaRoot(await fx.raw.get('deltas/0000000000000003'), 3, context);
        const crafted = Buffer.from(encodeDeltaRoot(3, delta.delta!, escaped(delta.pages), config.volumeId));
        const out = await freshDir(`${kind}-crafted`);
        const target = join(out, 'restored.img');
        const message = /^cdp-s3: delta 0000000000000003: names pack "\.\.\/otherrepo\/packs\/\d{16}-[0-9a-f]{8}", which is not a pack key \(packs\/<16-digit seq>-<8 hex digits>\)/;
        await withDamaged(fx, 'deltas/0000000000000003', () => crafted, async () => {
          expectFailure(await cli('--repo', fx.repo, 'restore', '--at', '3', '--to', target), EXIT.integrity, message);
          expectFailure(await cli('--repo', fx.repo, 'log'), EXIT.integrity, message);
          await expectNoTarget(target);
        });
        // A span naming one is replaced like any damaged span: point 2 folds deltas 1 and 2.
        const block = { level: 1, first: 1, last: 2 };
        const span = decodeSpanRoot(await fx.raw.get('spans/01/0000000000000002'), block, context);
        const craftedSpan = Buffer.from(encodeSpanRoot({ ...block, end: span.end }, escaped(span.pages), { inline: span.summaries! }, config.volumeId));
        await withDamaged(fx, 'spans/01/0000000000000002', () => craftedSpan, async () => {
          await expectRestores(fx, fx.rounds[1]!);
        });
      });

      if (kind === 'fs') it('a pack replaced by a symbolic link to a file outside the repository: not followed; restore and verify report it missing', async () => {
        const own = await makeRepo('fs', 'linked-pack', { rounds: 1 });
        const pack = (await own.raw.keys('packs/'))[0]!;
        const path = join(own.repo, pack);
        const outside = join(await freshDir('outside'), 'pack');
        await cp(path, outside); // the same bytes: only following the link could make it look intact
        await rm(path);
        await symlink(outside, path);
        const target = join(await freshDir('linked-pack'), 'restored.img');
        expectFailure(await cli('--repo', own.repo, 'restore', '--at', '1', '--to', target), EXIT.integrity, new RegExp(`pack ${pack}: is missing from file://`));
        await expectNoTarget(target);
        const verified = await cli('--repo', own.repo, '--json', 'verify');
        expect(verified.code, verified.stderr).toBe(EXIT.integrity);
        expect(verified.stdout).toContain(pack);
      });

      if (kind === 'fs') it('a FIFO planted in the repository (a delta, a pack, a marks object): log, verify and restore fail at once with one line naming it, instead of blocking in open()', async () => {
        const own = await makeRepo('fs', 'fifo', { rounds: 2 });
        const pack = (await own.raw.keys('packs/'))[0]!;
        const target = join(await freshDir('fifo'), 'restored.img');
        const log = ['log'];
        const verify = ['verify'];
        const restore = ['restore', '--at', '1', '--to', target];
        const cases = [
          { key: 'deltas/0000000000000002', commands: [log, verify, restore] },
          { key: pack, commands: [verify, restore] }, // log reads no pack
          { key: 'marks/0000000000000001-0badf1f0', commands: [log, verify, restore] },
        ];
        const before = await snapshot(own.raw);
        for (const { key, commands } of cases) {
          const path = join(own.repo, key);
          const original = await readFile(path).catch(() => undefined);
          await mkdir(join(path, '..'), { recursive: true });
          await rm(path, { force: true });
          execFileSync('mkfifo', [path]);
          try {
            for (const command of commands) {
              const message = new RegExp(`^cdp-s3: ${key} in file://\\S+ is a FIFO \\(named pipe\\), not a regular file: the repository is damaged .*; remove it$`);
              expectFailure(await cli('--repo', own.repo, ...command), EXIT.store, message);
            }
            await expectNoTarget(target);
          } finally {
            await rm(path);
            if (original !== undefined) await writeFile(path, original);
          }
        }
        expect(await snapshot(own.raw)).toEqual(before);
        await expectIntact(own);
      });

      it('pack with a flipped data byte: restore refuses with the integrity code (digest mismatch), no target', async () => {
        const pack = (await fx.raw.keys('packs/0000000000000001-'))[0]!;
        // Byte 16 is the first byte of the first region stored in the base pack (after the 16-byte header).
        await withDamaged(
          fx,
          pack,
          (b) => {
            b[16] = b[16]! ^ 0x01;
            return b;
          },
          async () => {
            const out = await freshDir(`${kind}-pack`);
            const target = join(out, 'restored.img');
            expectFailure(
              await cli('--repo', fx.repo, 'restore', '--at', '1', '--to', target),
              EXIT.integrity,
              new RegExp(`region \\d+ in ${pack} at 16: digest mismatch \\(expected [0-9a-f]{64}, got [0-9a-f]{64}\\)`),
            );
            await expectNoTarget(target);
            // To standard output: refused before the damaged region is written.
            const piped = await cli('--repo', fx.repo, 'restore', '--at', '1', '--to', '-');
            expect(piped.code, piped.stderr).toBe(EXIT.integrity);
          },
        );
      });

      it('pack truncated: restore refuses with the integrity code, no target', async () => {
        const pack = (await fx.raw.keys('packs/0000000000000001-'))[0]!;
        await withDamaged(
          fx,
          pack,
          (b) => b.subarray(0, 16 + REGION / 2),
          async () => {
            const out = await freshDir(`${kind}-pack-cut`);
            const target = join(out, 'restored.img');
            expectFailure(await cli('--repo', fx.repo, 'restore', '--at', '1', '--to', target), EXIT.integrity, new RegExp(`pack ${pack}: .*truncated`));
            await expectNoTarget(target);
          },
        );
      });

      it('pack header with an unknown version: regions are verified by digest, so restore stays bit-exact', async () => {
        // Packs carry no index (the delta is the index) and restore never reads the header; each
        // region it reads is checked against its SHA-256, so the header's version cannot mislead it.
        const pack = (await fx.raw.keys('packs/0000000000000001-'))[0]!;
        expect(versionOf(await fx.raw.get(pack))).toBe(1);
        await withDamaged(fx, pack, (b) => withVersion(b, 2, false), () => expectRestores(fx, fx.rounds[0]!));
      });

      it('after all the damage was repaired, every point in time restores bit-exact', async () => {
        await expectIntact(fx);
      });
    });

    if (kind === 's3') {
      it("a prefix with '..', '.' or empty segments: refused as usage, nothing written here or in another bucket", async () => {
        const work = await freshDir('escape');
        const source = join(work, 'disk.img');
        await writeFile(source, makeImage({ size: 256 * 1024, regionSize: REGION, seed: 11 }));
        const other = new S3RawObjects(OTHER_BUCKET, '', fixture.server.endpoint);
        const mine = new S3RawObjects(BUCKET, '', fixture.server.endpoint);
        fixture.onTeardown(() => (other.destroy(), mine.destroy()));
        const before = await snapshot(mine);
        for (const repo of [`s3://${BUCKET}/../${OTHER_BUCKET}`, `s3://${BUCKET}/a/../../${OTHER_BUCKET}/x`, `s3://${BUCKET}/./x`, `s3://${BUCKET}/a//x`]) {
          for (const args of [['init', '--from', source], ['init', '--size', '1MiB'], ['log']]) {
            expectFailure(await cli('--repo', repo, ...args), EXIT.usage, /bad S3 repository .*: the prefix may not have empty, '\.' or '\.\.' segments; use s3:\/\/bucket\[\/prefix\]/);
          }
        }
        expect(await other.keys()).toEqual([]);
        expect(await snapshot(mine)).toEqual(before);
      });

      it('an endpoint that is not an http(s) URL: usage, naming where it came from; user:password@ is never echoed', async () => {
        for (const endpoint of ['not a url', 'ftp://user:secret@127.0.0.1/x', '']) {
          const result = await cli('--repo', fx.repo, '--endpoint', endpoint, 'log');
          expectFailure(result, EXIT.usage, /^cdp-s3: --endpoint ".*" (is not a URL|has scheme ftp, not http or https): give the server's URL, e\.g\. http:\/\/127\.0\.0\.1:9000/);
          expect(result.stderr).not.toContain('secret');
        }
        const saved = process.env['AWS_ENDPOINT_URL'];
        process.env['AWS_ENDPOINT_URL'] = 'localhost:9000';
        try {
          expectFailure(await cli('--repo', fx.repo, 'log'), EXIT.usage, /^cdp-s3: AWS_ENDPOINT_URL "localhost:9000" has scheme localhost, not http or https/);
        } finally {
          process.env['AWS_ENDPOINT_URL'] = saved;
        }
        // A URL with userinfo works, and messages show ***@ in its place.
        const withUser = fixture.server.endpoint.replace('http://', 'http://user:secret@');
        const result = await cli('--repo', 's3://no-such-bucket/x', '--endpoint', withUser, 'log');
        expectFailure(result, EXIT.store, /bucket no-such-bucket does not exist at http:\/\/\*\*\*@127\.0\.0\.1:\d+: create it or fix --repo/);
        expect(result.stderr).not.toContain('secret');
        const listed = await cli('--repo', fx.repo, '--endpoint', withUser, '--json', 'log');
        expect(listed.code, listed.stderr).toBe(EXIT.ok);
      });

      it('no region in the environment or the AWS config: us-east-1, as --region says (every S3 command failed)', async () => {
        const work = await freshDir('no-region');
        const env: NodeJS.ProcessEnv = {
          ...process.env,
          AWS_CONFIG_FILE: join(work, 'no-config'),
          AWS_SHARED_CREDENTIALS_FILE: join(work, 'no-credentials'),
          AWS_EC2_METADATA_DISABLED: 'true',
        };
        for (const name of ['AWS_REGION', 'AWS_DEFAULT_REGION', 'AWS_PROFILE']) delete env[name];
        const run = (args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> =>
          new Promise((resolve) => {
            const child = spawnCli(args, env);
            let stdout = '';
            let stderr = '';
            child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
            child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
            child.on('close', (code) => resolve({ code, stdout, stderr }));
          });
        const repo = `s3://${BUCKET}/no-region-${counter}`;
        const created = await run(['--repo', repo, 'init', '--size', '1MiB', '--region-size', '64KiB']);
        expect(created.code, created.stderr).toBe(EXIT.ok);
        const listed = await run(['--repo', repo, '--json', 'log']);
        expect(listed.code, listed.stderr).toBe(EXIT.ok);
        expect(JSON.parse(listed.stdout)).toEqual([]);
      });

      it('bucket missing: the store exit code, the message says the bucket is missing', async () => {
        const out = await freshDir('no-bucket');
        const target = join(out, 'restored.img');
        for (const args of [['init', '--from', fx.source], ['log'], ['backup', fx.source], ['restore', '--at', 'latest', '--to', target]]) {
          const result = await cli('--repo', 's3://no-such-bucket/x', ...args);
          expectFailure(result, EXIT.store, /bucket no-such-bucket does not exist at http:\/\/127\.0\.0\.1:\d+: create it or fix --repo/);
        }
        await expectNoTarget(target);
      });

      it('endpoint unreachable: the store exit code after retries, the message names the endpoint', async () => {
        const port = await closedPort();
        const endpoint = `http://127.0.0.1:${port}`;
        const out = await freshDir('unreachable');
        const target = join(out, 'restored.img');
        expectFailure(
          await cli('--repo', `s3://${BUCKET}/x`, '--endpoint', endpoint, 'log'),
          EXIT.store,
          new RegExp(`cannot reach ${endpoint.replace(/\./g, '\\.')} \\(ECONNREFUSED\\): check the endpoint \\(--endpoint or AWS_ENDPOINT_URL\\) and the network`),
        );
        expectFailure(await cli('--repo', `s3://${BUCKET}/x`, '--endpoint', endpoint, 'restore', '--at', '1', '--to', target), EXIT.store, /cannot reach/);
        await expectNoTarget(target);
      });

      it('credentials refused: the store exit code, the message is about credentials, nothing written', async () => {
        const before = await snapshot(fx.raw);
        const out = await freshDir('credentials');
        const target = join(out, 'restored.img');
        process.env['AWS_ACCESS_KEY_ID'] = 'WRONG';
        try {
          for (const args of [['log'], ['backup', fx.source], ['init', '--from', fx.source], ['restore', '--at', '1', '--to', target]]) {
            expectFailure(
              await cli('--repo', fx.repo, ...args),
              EXIT.store,
              /access to .* denied \((?!Unknown\))[\w ]+\): check the credentials from the AWS chain \(AWS_ACCESS_KEY_ID\/AWS_SECRET_ACCESS_KEY or AWS_PROFILE\)/,
            );
          }
        } finally {
          process.env['AWS_ACCESS_KEY_ID'] = s3ServerEnv(fixture.server)['AWS_ACCESS_KEY_ID'];
        }
        await expectNoTarget(target);
        expect(await snapshot(fx.raw)).toEqual(before);
        await expectIntact(fx);
      });
    }
  });
}

/** A TCP port on 127.0.0.1 that nothing listens on (bound, then closed). */
async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as { port: number };
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

function tryRun(command: string, args: string[]): { ok: true; stdout: string } | { ok: false; why: string } {
  try {
    return { ok: true, stdout: execFileSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim() };
  } catch (error) {
    const e = error as { stderr?: string; message: string };
    return { ok: false, why: (e.stderr?.trim() || e.message).split('\n')[0]! };
  }
}

describe('targets that need the operating system (local store)', () => {
  it('disk full on the target: "no space", the target exit code, no partial file left', async (ctx) => {
    const fx = await makeRepo('fs', 'disk-full', { rounds: 1, image: makeImage({ size: 4 * 1024 * 1024, regionSize: REGION, seed: 9, zero: 0, repeated: 0 }) });
    const mountpoint = await freshDir('tmpfs');
    const mounted = tryRun('mount', ['-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', mountpoint]);
    requireOrSkip(ctx, mounted.ok ? undefined : `cannot mount a 2 MiB tmpfs to fill up (${mounted.why}); needs root with CAP_SYS_ADMIN`);
    try {
      const target = join(mountpoint, 'restored.img');
      expectFailure(
        await cli('--repo', fx.repo, 'restore', '--at', '1', '--to', target),
        EXIT.volume,
        /restored\.img: no space left on the target's disk; free space or restore elsewhere/,
      );
      expect(await readdir(mountpoint)).toEqual([]);
    } finally {
      tryRun('umount', [mountpoint]);
    }
    await expectIntact(fx);
  });

  describe('block device targets (loop devices)', () => {
    const loops: string[] = [];
    let setupError: string | undefined;
    let fx: Fixture;
    const VOLUME = 2 * 1024 * 1024;

    beforeAll(async () => {
      fx = await makeRepo('fs', 'loop', { rounds: 2, size: VOLUME });
    });

    afterAll(() => {
      for (const loop of loops) tryRun('losetup', ['-d', loop]);
    });

    /** A loop device over a new file of `size` bytes filled with 0x5a, or undefined with setupError set. */
    async function loopDevice(size: number): Promise<string | undefined> {
      const backing = join(fx.work, `loop-${size}-${loops.length}.img`);
      await writeFile(backing, Buffer.alloc(size, 0x5a));
      const attached = tryRun('losetup', ['-f', '--show', backing]);
      if (!attached.ok) {
        setupError = attached.why;
        return undefined;
      }
      loops.push(attached.stdout);
      return attached.stdout;
    }

    async function readDevice(device: string, length: number): Promise<Buffer> {
      const handle = await open(device, 'r');
      try {
        const buffer = Buffer.alloc(length);
        let filled = 0;
        while (filled < length) {
          const { bytesRead } = await handle.read(buffer, filled, length - filled, filled);
          if (bytesRead === 0) break;
          filled += bytesRead;
        }
        return buffer.subarray(0, filled);
      } finally {
        await handle.close();
      }
    }

    it('a device smaller than the volume: refused with the target exit code, the device untouched', async (ctx) => {
      const device = await loopDevice(VOLUME / 2);
      requireOrSkip(ctx, device === undefined ? `no loop device (losetup -f --show failed: ${setupError}); needs root and /dev/loop-control` : undefined);
      if (device === undefined) return;
      expectFailure(
        await cli('--repo', fx.repo, 'restore', '--at', 'latest', '--to', device),
        EXIT.volume,
        new RegExp(`${device} holds ${VOLUME / 2} bytes, the volume needs ${VOLUME}: use a larger device`),
      );
      expect((await readDevice(device, VOLUME / 2)).equals(Buffer.alloc(VOLUME / 2, 0x5a))).toBe(true);
    });

    it('a device of the volume size: restored and read back bit-exact', async (ctx) => {
      const device = await loopDevice(VOLUME);
      requireOrSkip(ctx, device === undefined ? `no loop device (losetup -f --show failed: ${setupError}); needs root and /dev/loop-control` : undefined);
      if (device === undefined) return;
      for (const round of fx.rounds) {
        const result = await cli('--repo', fx.repo, '--json', 'restore', '--at', String(round.seq), '--to', device);
        expect(result.code, result.stderr).toBe(EXIT.ok);
        expect((JSON.parse(result.stdout) as { targetKind: string }).targetKind).toBe('block-device');
        expect((await readDevice(device, VOLUME)).equals(round.image), `point in time ${round.seq} on ${device}`).toBe(true);
      }
    });
  });

  it('source unreadable by the user: refused with the volume exit code, nothing written', async (ctx) => {
    // We run as root, for whom chmod 000 changes nothing. So run the built CLI as the
    // unprivileged user 65534 (nobody) against a mode-000 source; skipped where that is not allowed.
    const fx = await makeRepo('fs', 'unreadable', { rounds: 1 });
    for (let d = fx.work; d.startsWith(fixture.dir); d = join(d, '..')) await chmod(d, 0o755);
    // The repository is private to its owner (root); that user must read it, not write it.
    execFileSync('chmod', ['-R', 'go+rX', fx.repo]);
    const unreadable = join(fx.work, 'unreadable.img');
    await writeFile(unreadable, fx.rounds[0]!.image);
    await chmod(unreadable, 0o000);
    const before = await snapshot(fx.raw);
    const entry = await cliCopyForEveryone(join(fx.work, 'cli'));
    const run = (args: string[]): Promise<{ code: number | null; stdout: string; stderr: string; error?: Error }> =>
      new Promise((resolve) => {
        const child = spawn(process.execPath, [entry, ...args], { uid: 65534, gid: 65534, env: process.env, stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
        child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
        child.on('error', (error) => resolve({ code: null, stdout, stderr, error }));
        child.on('close', (code) => resolve({ code, stdout, stderr }));
      });
    const probe = await run(['--repo', fx.repo, '--json', 'log']);
    requireOrSkip(ctx, probe.code === 0 ? undefined : `cannot run the CLI as user 65534 (${probe.error?.message ?? probe.stderr.trim()})`);
    // init reads the source before it looks at the repository, so both name the source.
    for (const args of [['backup', unreadable], ['init', '--from', unreadable]]) {
      const result = await run(['--repo', fx.repo, ...args]);
      expectFailure(
        { code: result.code ?? -1, stdout: result.stdout, stderr: result.stderr, stdoutBytes: Buffer.from(result.stdout) },
        EXIT.volume,
        /unreadable\.img is not readable by this user; run with the needed permissions/,
      );
    }
    // With a fresh location, no repository is created.
    const fresh = join(fx.work, 'fresh-repo');
    const result = await run(['--repo', fresh, 'init', '--from', unreadable]);
    expectFailure({ code: result.code ?? -1, stdout: result.stdout, stderr: result.stderr, stdoutBytes: Buffer.alloc(0) }, EXIT.volume, /is not readable by this user/);
    expect(await exists(fresh)).toBe(false);
    expect(await snapshot(fx.raw)).toEqual(before);
    await expectIntact(fx);
  });
});

describe('interrupting a real backup process (local store)', () => {
  const MiB = 1024 * 1024;

  /** Fills `path` (of `size` bytes) with random data, 8 MiB at a time. */
  async function fillRandom(path: string, size: number): Promise<void> {
    const handle = await open(path, 'r+');
    try {
      const chunk = Buffer.alloc(8 * MiB);
      for (let offset = 0; offset < size; offset += chunk.length) {
        randomFillSync(chunk);
        await handle.write(chunk, 0, Math.min(chunk.length, size - offset), offset);
      }
    } finally {
      await handle.close();
    }
  }

  /** Resolves once the backup has begun writing packs (the packs/ directory has an entry). */
  async function packsStarted(repo: string, child: ReturnType<typeof spawnCli>): Promise<boolean> {
    let started = false;
    await waitUntil(async () => {
      started = (await readdir(join(repo, 'packs')).catch(() => [])).length > 0;
      return started || child.exitCode !== null || child.signalCode !== null;
    }, 'the backup to write a pack');
    return started;
  }

  function exited(child: ReturnType<typeof spawnCli>): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    child.stdout!.resume();
    return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stderr })));
  }

  /**
   * A repository whose point in time 1 is the all-zero volume, and a source now full of random
   * data, so the next backup has `size` bytes to hash and upload. Bigger on each attempt, in case
   * a backup finishes before the signal lands.
   */
  async function prepare(name: string, attempt: number): Promise<{ repo: string; source: string; size: number; work: string }> {
    const size = (64 << attempt) * MiB;
    const work = await freshDir(`${name}-${attempt}`);
    const repo = join(work, 'repo');
    const source = join(work, 'disk.img');
    await writeFile(source, '');
    await truncate(source, size);
    expect((await cli('--repo', repo, 'init', '--from', source)).code).toBe(EXIT.ok);
    const base = await cli('--repo', repo, 'backup', source);
    expect(base.code, base.stderr).toBe(EXIT.ok);
    await fillRandom(source, size);
    return { repo, source, size, work };
  }

  async function expectAllZero(repo: string, work: string, size: number): Promise<void> {
    const target = join(work, 'zero.img');
    const result = await cli('--repo', repo, 'restore', '--at', '1', '--to', target);
    expect(result.code, result.stderr).toBe(EXIT.ok);
    const bytes = await readFile(target);
    expect(bytes.length).toBe(size);
    expect(bytes.every((b) => b === 0)).toBe(true);
    await rm(target);
  }

  async function expectNextBackupRestores(repo: string, source: string, work: string, globalArgs: string[] = []): Promise<void> {
    const next = await cli('--repo', repo, ...globalArgs, '--json', 'backup', source);
    expect(next.code, next.stderr).toBe(EXIT.ok);
    expect((JSON.parse(next.stdout) as { seq: number }).seq).toBe(2);
    const target = join(work, 'restored.img');
    const restored = await cli('--repo', repo, 'restore', '--at', 'latest', '--to', target);
    expect(restored.code, restored.stderr).toBe(EXIT.ok);
    expect((await readFile(target)).equals(await readFile(source))).toBe(true);
    await rm(target);
  }

  it('SIGINT during backup: exit 130, nothing committed, the next backup is correct', async () => {
    for (let attempt = 0; attempt < 3; attempt++) {
      const { repo, source, size, work } = await prepare('sigint', attempt);
      const child = spawnCli(['--repo', repo, '--no-progress', 'backup', source]);
      const done = exited(child);
      const started = await packsStarted(repo, child);
      child.kill('SIGINT');
      const { code, signal, stderr } = await done;
      if (code === EXIT.ok) {
        // The backup finished before the signal arrived: try again with a bigger disk.
        await rm(work, { recursive: true, force: true });
        continue;
      }
      expect(started, `backup exited early: ${stderr}`).toBe(true);
      expect({ code, signal }, stderr).toEqual({ code: EXIT.interrupted, signal: null });
      const lines = stderr.split('\n').filter((line) => line !== '');
      expect(lines.every((line) => line.startsWith('cdp-s3: ')), stderr).toBe(true);
      expect(stderr).toMatch(/cdp-s3: SIGINT: cancelling/);
      expect(stderr).toMatch(/cdp-s3: backup cancelled; nothing was committed/);
      expect(await seqsOf(repo)).toEqual([1]);
      // A clean cancel removes its temporary files too.
      expect((await new FsRawObjects(repo).keys()).filter((k) => k.split('/').some((s) => s.startsWith('.tmp-')))).toEqual([]);
      await expectAllZero(repo, work, size);
      await expectNextBackupRestores(repo, source, work);
      await rm(work, { recursive: true, force: true });
      return;
    }
    throw new Error('every backup finished before SIGINT arrived; cannot test the interruption');
  });

  it('SIGKILL during backup: nothing committed, leftovers harmless, the next backup is correct', async () => {
    for (let attempt = 0; attempt < 3; attempt++) {
      const { repo, source, size, work } = await prepare('sigkill', attempt);
      const child = spawnCli(['--repo', repo, '--no-progress', 'backup', source]);
      const done = exited(child);
      await packsStarted(repo, child);
      child.kill('SIGKILL');
      const { code, signal, stderr } = await done;
      if (code === EXIT.ok) {
        await rm(work, { recursive: true, force: true });
        continue;
      }
      expect({ code, signal }, stderr).toEqual({ code: null, signal: 'SIGKILL' });
      expect(await seqsOf(repo)).toEqual([1]);
      await expectAllZero(repo, work, size);
      // The killed backup's lock is left behind, but its process is gone from this host: the
      // next backup takes it over (test/cli/lock.test.ts covers a holder on another host).
      await expectNextBackupRestores(repo, source, work);
      await rm(work, { recursive: true, force: true });
      return;
    }
    throw new Error('every backup finished before SIGKILL arrived; cannot test the crash');
  });
});
