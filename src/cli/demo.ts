// `cdp-s3 demo`: the whole product on an embedded default. It makes a sample disk image with
// random, zero and repeated regions, starts an S3-compatible server on 127.0.0.1 (s3rver, in a
// child process), and runs the real commands: init, backup, change the disk, backup, log,
// restore --at the first point in time, checks the restored image bit for bit, then changes the
// disk behind cdp-s3's back and runs an integrity scan that repairs it and marks suspects.

import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { makeImage, mutateImage } from '../demo/sample-image.js';
import { CdpError } from '../errors.js';
import { CliContext } from './context.js';
import { parseSize } from './units.js';

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

export function registerDemo(program: Command): void {
  program
    .command('demo')
    .description('run init, backup, change, backup, log, restore and scan against a local S3 server and a sample disk')
    .option('--size <bytes>', 'size of the sample disk', '64MiB')
    .option('--keep', 'keep the working directory (disk images, S3 server data)')
    .action(async (opts: { size: string; keep?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const say = (text: string): void => void cli.stdout.write(`${text}\n`);
      const size = parseSize(opts.size, '--size');
      // s3rver is a development dependency: present after `npm ci`, not in a production install.
      const { startS3Server, s3ServerEnv } = await import('../dev/s3-server.js').catch((error: unknown) => {
        throw new CdpError('NOT_FOUND', 'the demo needs the development dependencies: run `npm ci` in the cdp-s3 checkout', { cause: error });
      });
      const { run } = await import('./program.js');
      const dir = await mkdtemp(join(tmpdir(), 'cdp-s3-demo-'));
      const server = await startS3Server({ buckets: ['demo'], directory: join(dir, 's3') });
      const savedEnv = { ...process.env };
      Object.assign(process.env, s3ServerEnv(server));
      // The demo repository is encrypted like any other: with this password unless one is set.
      process.env['CDP_S3_PASSWORD'] ||= 'cdp-s3-demo';
      delete process.env['AWS_CA_BUNDLE'];
      try {
        const disk = join(dir, 'disk.img');
        const repo = 's3://demo/my-server/disk0';
        const step = async (args: string[], expected = 0): Promise<void> => {
          say(`\n$ cdp-s3 ${args.join(' ')}`);
          const code = await run(['--repo', repo, '--no-progress', ...args], { stdout: cli.stdout, stderr: cli.stderr });
          if (code !== expected) throw new CdpError('INVALID_ARGUMENT', `demo step failed with exit code ${code}: cdp-s3 ${args.join(' ')}`);
        };
        say(`S3-compatible server (s3rver) at ${server.endpoint}, bucket "demo"; working directory ${dir}; repository password from CDP_S3_PASSWORD`);
        const image = makeImage({ size, regionSize: 1024 * 1024, seed: 2026, zero: 0.2, repeated: 0.1 });
        await writeFile(disk, image);
        const firstDigest = sha256(image);
        say(`sample disk ${disk}: ${size} bytes, about 70% random, 20% zero and 10% repeated 1 MiB regions`);

        await step(['init', '--from', disk]);
        await step(['backup', disk]);
        const firstTime = new Date().toISOString();
        await new Promise((resolve) => setTimeout(resolve, 20));

        mutateImage(image, 12, 7);
        await writeFile(disk, image);
        say('\n(changed 12 random spans of the disk)');
        await step(['backup', disk]);
        await step(['log']);
        const restored = join(dir, 'restored.img');
        await step(['restore', '--at', firstTime, '--to', restored]);
        const restoredDigest = sha256(await readFile(restored));
        const same = restoredDigest === firstDigest;
        say(`\nfirst point in time  sha256 ${firstDigest}`);
        say(`restored image       sha256 ${restoredDigest}`);
        say(same ? 'restored image matches the disk as it was at the first backup: bit-exact' : 'MISMATCH: the restored image differs');
        if (!same) throw new CdpError('INTEGRITY', 'demo restore did not match');

        // An integrity scan: a change made behind cdp-s3's back is found, repaired, and the
        // points in time that cannot be trusted are marked.
        image.fill(0x5a, 3 * 1024 * 1024, 3 * 1024 * 1024 + 4096);
        await writeFile(disk, image);
        say('\n(changed 4 KiB of the disk behind cdp-s3\'s back)');
        await step(['scan', disk], 10);
        await step(['log']);
      } finally {
        process.env = savedEnv;
        await server.stop();
        if (opts.keep === true) say(`kept ${dir}`);
        else await rm(dir, { recursive: true, force: true });
      }
    });
}
