// A real filesystem through `protect`: nbdfuse over the NBD export, a loop device on the FUSE
// file, mkfs.ext4, mount, write files, freeze, wait for a point in time and note its time, write
// more, unmount; then restore --at the noted time: e2fsck -fn is clean and it holds the first
// files only.

import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { log } from '../../src/core/log.js';
import { protect } from '../../src/core/protect.js';
import { openStore } from '../../src/store/open.js';
import { cli } from '../helpers/cli.js';
import { IN_CI, notRoot, requireOrSkip } from '../helpers/requirements.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { waitUntil } from '../helpers/wait.js';

const run = promisify(execFile);
const fixture = useS3Fixture('protectfs', ['protectfs']);

async function missing(): Promise<string | undefined> {
  if (!existsSync('/dev/fuse')) return '/dev/fuse is missing';
  const root = notRoot();
  if (root !== undefined) return `${root} (losetup, mount)`;
  for (const tool of ['nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck', 'debugfs', 'fsfreeze', 'fusermount3', 'mount']) {
    if (!(await run('which', [tool]).then(() => true, () => false))) return `${tool} is missing (apt-get install libnbd-bin fuse3 e2fsprogs util-linux)`;
  }
  return undefined;
}

for (const kind of ['fs', 's3'] as const) {
  describe(`a real ext4 filesystem through protect (${kind} store)`, () => {
    it('restores the filesystem as it was at a noted time: fsck clean, the first files only', async (ctx) => {
      requireOrSkip(ctx, await missing());
      const work = join(fixture.dir, kind);
      const mnt = join(work, 'mnt');
      const fuse = join(work, 'fuse');
      await mkdir(mnt, { recursive: true });
      await mkdir(fuse, { recursive: true });
      const source = join(work, 'disk.img');
      await writeFile(source, Buffer.alloc(0));
      await run('truncate', ['-s', '64M', source]);
      const repoUrl = kind === 'fs' ? join(work, 'repo') : 's3://protectfs/disk';
      const store = openStore(repoUrl);
      await init({ store, from: source });
      await backup({ store, source, workers: 2 });
      const handle = await protect({ store, source, drl: join(work, 'disk.drl'), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 3_600_000 }); // the test ships by itself
      let nbdfuse: ChildProcess | undefined;
      let loop: string | undefined;
      let mounted = false;
      let noted = '';
      try {
        nbdfuse = spawn('nbdfuse', [join(fuse, 'nbd'), `nbd://127.0.0.1:${handle.port}`], { stdio: 'ignore' });
        const fuser = nbdfuse;
        await waitUntil(() => existsSync(join(fuse, 'nbd')) || fuser.exitCode !== null, 'nbdfuse to provide its file', 20);
        expect(nbdfuse.exitCode, 'nbdfuse exited').toBeNull();
        try {
          loop = (await run('losetup', ['-f', '--show', join(fuse, 'nbd')])).stdout.trim();
        } catch (error) {
          if (IN_CI) throw error;
          return ctx.skip(`losetup is not permitted here: ${(error as Error).message.split('\n')[0]}`);
        }
        await run('mkfs.ext4', ['-q', loop]);
        await run('mount', [loop, mnt]);
        mounted = true;
        await writeFile(join(mnt, 'first.txt'), 'the first set\n');
        await mkdir(join(mnt, 'dir'));
        await writeFile(join(mnt, 'dir', 'data.bin'), Buffer.alloc(300_000, 7));
        // Freeze: the filesystem on the disk is consistent (every write it made is acknowledged);
        // ship a point in time now and note its time.
        await run('fsfreeze', ['-f', mnt]);
        try {
          const shipped = await handle.volume.sealAndShip();
          expect(shipped).toBeDefined();
          noted = (await log({ store })).entries.find((e) => e.seq === shipped!.seq)!.time;
        } finally {
          await run('fsfreeze', ['-u', mnt]);
        }
        await writeFile(join(mnt, 'second.txt'), 'written after the noted time\n');
        await run('sync');
      } finally {
        if (mounted) await run('umount', [mnt]).catch(() => undefined);
        if (loop !== undefined) await run('losetup', ['-d', loop]).catch(() => undefined);
        await run('fusermount3', ['-u', fuse]).catch(() => undefined);
        nbdfuse?.kill();
        await handle.stop();
      }
      const restored = join(work, 'restored.img');
      const result = await cli('--repo', repoUrl, 'restore', '--at', noted, '--to', restored);
      expect(result.code, result.stderr).toBe(0);
      const fsck = await run('e2fsck', ['-fn', restored]).then(
        (r) => ({ code: 0, out: r.stdout }),
        (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
      );
      expect(fsck.code, fsck.out).toBe(0);
      const listing = (await run('debugfs', ['-R', 'ls -p /', restored])).stdout;
      expect(listing).toMatch(/first\.txt/);
      expect(listing).not.toMatch(/second\.txt/);
      expect((await run('debugfs', ['-R', 'cat /first.txt', restored])).stdout).toBe('the first set\n');
      const data = join(work, 'data.bin');
      await run('debugfs', ['-R', `dump /dir/data.bin ${data}`, restored]);
      expect((await readFile(data)).equals(Buffer.alloc(300_000, 7))).toBe(true);
    });
  });
}
