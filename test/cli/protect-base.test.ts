// `init` then `protect`, no backup: protect serves at once, takes the base while serving (status
// shows its progress), and a real NBD client's writes become the next point in time.

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { log } from '../../src/core/log.js';
import { protect } from '../../src/core/protect.js';
import { status } from '../../src/core/status.js';
import { cli, cliStore } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { waitUntil } from '../helpers/wait.js';

const run = promisify(execFile);
const REGION = 64 * 1024;
const SIZE = 4 * 1024 * 1024;
const fixture = useS3Fixture('protectbasecli', ['protectbasecli']);
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const haveQemuIo = run('which', ['qemu-io']).then(
  () => true,
  () => false,
);

for (const kind of ['fs', 's3'] as const) {
  describe(`init, then protect without a backup (${kind} store)`, () => {
    it('serves at once, takes the base while serving, reports its progress, and ships the writes after it', async (ctx) => {
      if (!(await haveQemuIo)) return ctx.skip('qemu-io missing (apt-get install qemu-utils)');
      const work = join(fixture.dir, kind);
      await mkdir(work, { recursive: true });
      const repoUrl = kind === 'fs' ? join(work, 'repo') : 's3://protectbasecli/disk';
      const source = join(work, 'disk.img');
      await writeFile(source, makeImage({ size: SIZE, regionSize: REGION, seed: 5 }));
      const initialized = await cli('--repo', repoUrl, 'init', '--from', source, '--region-size', '64KiB');
      expect(initialized.code, initialized.stderr).toBe(0);
      const store = await cliStore(repoUrl);
      const lines: string[] = [];
      const waiters: Array<{ pattern: RegExp; resolve: () => void }> = [];
      const logged = (pattern: RegExp): Promise<void> =>
        new Promise((resolve) => (lines.some((l) => pattern.test(l)) ? resolve() : waiters.push({ pattern, resolve })));
      let tick!: () => void;
      const handle = await protect({
        store,
        source,
        drl: join(work, 'disk.drl'),
        listen: { host: '127.0.0.1', port: 0 },
        intervalMs: 1000,
        schedule: (run) => {
          tick = run;
          return () => {};
        },
        log: (line) => {
          lines.push(line);
          for (const w of waiters) if (w.pattern.test(line)) w.resolve();
        },
      });
      try {
        // Serving already; the first report (put in the background) shows the base under way.
        let first: Awaited<ReturnType<typeof status>>['protects'] = [];
        await waitUntil(async () => (first = (await status({ store })).protects).length > 0, 'the first status report');
        expect(first).toEqual([expect.objectContaining({ running: true, seq: 0, base: expect.objectContaining({ regionsDone: expect.any(Number) }) })]);
        await logged(/^base: point in time 1,/);
        const url = `nbd://127.0.0.1:${handle.port}`;
        await run('qemu-io', ['-f', 'raw', '-t', 'none', '-c', 'write -P 0xab 64k 128k', '-c', 'flush', url]);
        tick();
        await logged(/^point in time 2 /);
      } finally {
        await handle.stop();
      }
      const { protects } = await status({ store });
      expect(protects).toHaveLength(1);
      expect(protects[0]).toMatchObject({ running: false, seq: 2, unshippedRegions: 0 });
      expect(protects[0]!.base).toBeUndefined();
      expect((await log({ store })).entries.map((e) => e.kind)).toEqual(['base', 'host']);
      const restored = join(work, 'restored.img');
      const r = await cli('--repo', repoUrl, 'restore', '--at', 'latest', '--to', restored);
      expect(r.code, r.stderr).toBe(0);
      expect(sha(await readFile(restored))).toBe(sha(await readFile(source)));
    });
  });
}
