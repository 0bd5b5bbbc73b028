// Which targets restore refuses without --force: the disk the repository protects under any
// name (a symlink, a hard link, a loop device over the image), and, for --reuse-target, a file
// that is not plausibly an older copy of the volume. Refused means one line, exit code 4, and
// the target exactly as it was.

import { execFileSync } from 'node:child_process';
import { link, mkdir, mkdtemp, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { openStore } from '../../src/store/open.js';
import { type CliResult, cli } from '../helpers/cli.js';
import { makeImage, mutateImage } from '../helpers/images.js';

const REGION = 64 * 1024;
const VOLUME = 16 * REGION;
let scratch: string;
let counter = 0;
beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'cdp-restore-target-'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

function expectRefused(result: CliResult, pattern: RegExp): void {
  expect(result.stderr.trimEnd().split('\n'), result.stderr).toHaveLength(1);
  expect(result.stderr).toMatch(/^cdp-s3: /);
  expect(result.stderr).toMatch(pattern);
  expect(result.code, result.stderr).toBe(EXIT.volume);
  expect(result.stdout).toBe('');
}

/** A local repository with two points in time of `disk.img`; the image now holds the second. */
async function makeRepo() {
  const work = join(scratch, `r-${++counter}`);
  await mkdir(work, { recursive: true });
  const repo = join(work, 'repo');
  const store = openStore(repo);
  const source = join(work, 'disk.img');
  const image = makeImage({ size: VOLUME, regionSize: REGION, seed: counter, zero: 0.1, repeated: 0 });
  await writeFile(source, image);
  await init({ store, from: source, regionSize: REGION });
  await backup({ store, source, workers: 1 });
  const first = Buffer.from(image);
  mutateImage(image, 3, counter);
  await writeFile(source, image);
  await backup({ store, source, workers: 1 });
  return { work, repo, source, first, second: Buffer.from(image) };
}

const PROTECTED = /is the disk this repository protects; restoring onto it overwrites the live volume: pass --force if that is intended/;

describe('restore targets', () => {
  it('--reuse-target onto an unrelated file of another size: refused and left as it was; overwritten with --force', async () => {
    const { work, repo, second } = await makeRepo();
    const target = join(work, 'existing.txt');
    await writeFile(target, 'precious');
    expectRefused(
      await cli('--repo', repo, 'restore', '--at', 'latest', '--to', target, '--reuse-target'),
      /existing\.txt holds 8 bytes, not the volume's 1048576, so it is no older copy of this volume: pass --force to overwrite it anyway, or choose another --to/,
    );
    expect(await readFile(target, 'utf8')).toBe('precious');
    const forced = await cli('--repo', repo, 'restore', '--at', 'latest', '--to', target, '--reuse-target', '--force');
    expect(forced.code, forced.stderr).toBe(EXIT.ok);
    expect((await readFile(target)).equals(second)).toBe(true);
    expect((await readdir(work)).sort()).toEqual(['disk.img', 'existing.txt', 'repo']);
  });

  it('the protected disk through a symlink or a hard link, plain or with --reuse-target: refused, the disk untouched; done with --force', async () => {
    const { work, repo, source, first, second } = await makeRepo();
    const symbolic = join(work, 'symlink.img');
    const hard = join(work, 'hardlink.img');
    await symlink(source, symbolic);
    await link(source, hard);
    for (const target of [source, symbolic, hard]) {
      for (const extra of [[], ['--reuse-target']]) {
        expectRefused(await cli('--repo', repo, 'restore', '--at', '1', '--to', target, ...extra), PROTECTED);
        expect((await readFile(source)).equals(second), `${target} ${extra.join(' ')}: the disk is untouched`).toBe(true);
      }
    }
    const forced = await cli('--repo', repo, 'restore', '--at', '1', '--to', hard, '--reuse-target', '--force');
    expect(forced.code, forced.stderr).toBe(EXIT.ok);
    expect((await readFile(source)).equals(first)).toBe(true);
    expect((await readdir(work)).sort()).toEqual(['disk.img', 'hardlink.img', 'repo', 'symlink.img']);
  });

  describe('a loop device over the protected image', () => {
    let device: string | undefined;
    let setupError = '';
    let fx: Awaited<ReturnType<typeof makeRepo>>;
    beforeAll(async () => {
      fx = await makeRepo();
      try {
        device = execFileSync('losetup', ['-f', '--show', fx.source], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
      } catch (error) {
        setupError = (error as Error).message.split('\n')[0]!;
      }
    });
    afterAll(() => {
      if (device !== undefined) execFileSync('losetup', ['-d', device]);
    });

    it('is the same disk: refused, plain or with --reuse-target', async (ctx) => {
      if (device === undefined) return ctx.skip(`no loop device (losetup -f --show failed: ${setupError}); needs root and /dev/loop-control`);
      for (const extra of [[], ['--reuse-target']]) {
        expectRefused(await cli('--repo', fx.repo, 'restore', '--at', '1', '--to', device, ...extra), PROTECTED);
        expect((await readFile(fx.source)).equals(fx.second), 'the disk is untouched').toBe(true);
      }
    });
  });
});
