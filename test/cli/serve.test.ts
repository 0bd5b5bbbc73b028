// cdp-s3 serve through the command line: the built command as a child process (it runs until a
// signal), against the local store and s3rver; bad input in-process.

import { createServer } from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_LISTEN, nbdUri, parseListen } from '../../src/cli/serve.js';
import { EXIT } from '../../src/cli/exit-codes.js';
import { cli, spawnCli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { runTool } from '../nbd/helpers.js';
import { missingBinaries, skipOutsideCi, skipTitle } from '../helpers/requirements.js';
import { waitUntil } from '../helpers/wait.js';

const REGION = 64 * 1024;
const BUCKET = 'servecli';
const fixture = useS3Fixture('serve-cli', [BUCKET]);
const NBDCOPY_MISSING = missingBinaries('nbdcopy');

interface Served {
  child: ReturnType<typeof spawnCli>;
  /** Everything printed to stdout so far. */
  stdout: () => string;
  stderr: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function start(args: string[]): Served {
  const child = spawnCli(args);
  let stdout = '';
  let stderr = '';
  child.stdout!.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return { child, stdout: () => stdout, stderr: () => stderr, exited };
}

/** Waits for output (or the exit) until `value` finds what it looks for; only the test's timeout bounds it. */
async function until<T>(value: () => T | undefined, served: Served, what: string): Promise<T> {
  await waitUntil(() => value() !== undefined || served.child.exitCode !== null, what);
  const v = value();
  if (v === undefined) throw new Error(`serve exited (${served.child.exitCode}) before ${what}: ${served.stderr()}`);
  return v;
}

describe('serve listen addresses', () => {
  it('parses HOST:PORT and [IPV6]:PORT and refuses the rest', () => {
    expect(parseListen(DEFAULT_LISTEN)).toEqual({ host: '127.0.0.1', port: 10809 });
    expect(parseListen('localhost:0')).toEqual({ host: 'localhost', port: 0 });
    expect(parseListen('[::1]:10809')).toEqual({ host: '::1', port: 10809 });
    expect(parseListen('[fe80::1%eth0]:7')).toEqual({ host: 'fe80::1%eth0', port: 7 });
    for (const bad of ['', '10809', '127.0.0.1', '127.0.0.1:', ':10809', '::1:10809', '[::1]', '127.0.0.1:65536', '127.0.0.1:http', 'a b:1', '[::1]:1x']) {
      expect(() => parseListen(bad), bad).toThrow(/--listen .* is not an address: use HOST:PORT or \[IPV6\]:PORT/);
    }
    expect(nbdUri('127.0.0.1', 10809)).toBe('nbd://127.0.0.1:10809');
    expect(nbdUri('::1', 10809, 'disk 0')).toBe('nbd://[::1]:10809/disk%200');
  });
});

for (const kind of ['fs', 's3'] as const) {
  describe(`cdp-s3 serve (${kind} store)`, () => {
    let repo: string;
    let image: Buffer;
    beforeAll(async () => {
      repo = kind === 'fs' ? join(fixture.dir, 'repo') : `s3://${BUCKET}/disk`;
      image = makeImage({ size: 24 * REGION + 1000, regionSize: REGION, seed: 3 });
      const source = join(fixture.dir, `${kind}-disk.img`);
      await writeFile(source, image);
      expect((await cli('--repo', repo, 'init', '--from', source, '--region-size', '64KiB')).code).toBe(0);
      const backedUp = await cli('--repo', repo, 'backup', source);
      expect(backedUp.code, backedUp.stderr).toBe(0);
    });

    it.skipIf(skipOutsideCi(NBDCOPY_MISSING))(skipTitle('prints where it serves, serves under both names, and exits 0 on SIGINT', NBDCOPY_MISSING), async () => {
      const served = start(['--repo', repo, 'serve', '--at', 'latest', '--listen', '127.0.0.1:0', '--name', 'disk0', '--cache-size', '16MiB']);
      const line = await until(() => /^.*\n/.exec(served.stdout())?.[0], served, 'the serving line');
      const m = /^serving point in time 1 \((\d{4}-\d\d-\d\dT[\d:.]+Z)\) read-only at nbd:\/\/127\.0\.0\.1:(\d+)\/disk0\n$/.exec(line);
      expect(m, line).not.toBeNull();
      const port = Number(m![2]);
      for (const name of ['', '/disk0']) {
        const out = join(fixture.dir, `${kind}-copy${name.replace('/', '-')}.img`);
        const copied = await runTool('nbdcopy', [`nbd://127.0.0.1:${port}${name}`, out]);
        expect(copied.code, copied.stderr).toBe(0);
        expect((await readFile(out)).equals(image)).toBe(true);
      }
      served.child.kill('SIGINT');
      const { code, signal } = await served.exited;
      expect({ code, signal }, served.stderr()).toEqual({ code: EXIT.ok, signal: null });
      expect(served.stdout()).toBe(line);
      expect(served.stderr()).toMatch(/cdp-s3: SIGINT/);
      expect(served.stderr().split('\n').filter((l) => l !== '').every((l) => l.startsWith('cdp-s3: '))).toBe(true);
    });

    it.skipIf(kind !== 'fs' || skipOutsideCi(NBDCOPY_MISSING))(skipTitle('listens on an IPv6 address given as [::1]:PORT (skipped where there is no IPv6 loopback)', NBDCOPY_MISSING), async (context) => {
      const probe = createServer();
      const v6 = await new Promise<boolean>((resolve) => probe.once('error', () => resolve(false)).listen(0, '::1', () => resolve(true)));
      if (v6) await new Promise((resolve) => probe.close(resolve));
      else {
        context.skip('no IPv6 loopback here');
        return;
      }
      const served = start(['--repo', repo, 'serve', '--at', 'latest', '--listen', '[::1]:0']);
      const line = await until(() => /^.*\n/.exec(served.stdout())?.[0], served, 'the serving line');
      const m = /read-only at nbd:\/\/\[::1\]:(\d+)\n$/.exec(line);
      expect(m, line).not.toBeNull();
      const out = join(fixture.dir, 'v6-copy.img');
      const copied = await runTool('nbdcopy', [`nbd://[::1]:${m![1]}`, out]);
      expect(copied.code, copied.stderr).toBe(0);
      expect((await readFile(out)).equals(image)).toBe(true);
      served.child.kill('SIGTERM');
      expect((await served.exited).code, served.stderr()).toBe(EXIT.ok);
    });

    it('prints JSON with --json and stops on SIGTERM', async () => {
      const served = start(['--repo', repo, '--json', 'serve', '--at', '1', '--listen', '127.0.0.1:0']);
      const report = await until(
        () => {
          try {
            return JSON.parse(served.stdout()) as Record<string, unknown>;
          } catch {
            return undefined;
          }
        },
        served,
        'the JSON report',
      );
      expect(report).toMatchObject({ seq: 1, host: '127.0.0.1', names: [''] });
      expect(report['time']).toMatch(/^\d{4}-\d\d-\d\dT[\d:.]+Z$/);
      expect(report['port']).toBeGreaterThan(0);
      served.child.kill('SIGTERM');
      expect((await served.exited).code, served.stderr()).toBe(EXIT.ok);
    });

    it('refuses a bad --listen, a bad --cache-size and an address in use with one line each', async () => {
      const badListen = await cli('--repo', repo, 'serve', '--at', 'latest', '--listen', 'localhost');
      expect(badListen.code).toBe(EXIT.usage);
      expect(badListen.stderr).toMatch(/^cdp-s3: --listen "localhost" is not an address: use HOST:PORT or \[IPV6\]:PORT[^\n]*\n$/);
      const badCache = await cli('--repo', repo, 'serve', '--at', 'latest', '--cache-size', 'lots');
      expect(badCache.code).toBe(EXIT.usage);
      expect(badCache.stderr).toMatch(/^cdp-s3: --cache-size "lots" is not a size[^\n]*\n$/);
      const noPoint = await cli('--repo', repo, 'serve', '--at', '7', '--listen', '127.0.0.1:0');
      expect(noPoint.code).toBe(EXIT.noPointInTime);
      expect(noPoint.stderr).toMatch(/^cdp-s3: no point in time 7[^\n]*\n$/);

      const blocker = createServer();
      await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
      const port = (blocker.address() as { port: number }).port;
      try {
        const inUse = await cli('--repo', repo, 'serve', '--at', 'latest', '--listen', `127.0.0.1:${port}`);
        expect(inUse.code).toBe(EXIT.usage);
        expect(inUse.stderr).toMatch(new RegExp(`^cdp-s3: listen address 127\\.0\\.0\\.1:${port} is in use[^\\n]*\\n$`));
      } finally {
        await new Promise((resolve) => blocker.close(resolve));
      }
    });
  });
}
