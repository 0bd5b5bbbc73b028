// The repository lock through the command line: a second writer exits 8 with one line naming the
// holder, --force-unlock clears the way, and a lock left by a SIGKILLed backup blocks until then.

import { randomFillSync } from 'node:crypto';
import { mkdir, open, truncate, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { log } from '../../src/core/log.js';
import { acquireWriterLock, encodeLock, listLocks } from '../../src/repo/lock.js';

import { type CliResult, cli, cliStore, spawnCli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { waitUntil } from '../helpers/wait.js';

const BUCKET = 'cli-locks';
const REGION = 64 * 1024;
const MiB = 1024 * 1024;
const fixture = useS3Fixture('cli-lock', [BUCKET]);
let counter = 0;

function expectLockedLine(result: CliResult, holder: RegExp): void {
  expect(result.code, result.stderr).toBe(EXIT.locked);
  expect(result.stdout).toBe('');
  const lines = result.stderr.split('\n').filter((line) => line !== '');
  expect(lines, result.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^cdp-s3: repository .* is locked by /);
  expect(lines[0]).toMatch(holder);
  expect(lines[0]).toMatch(/if that process is gone, wait for the lock to expire or run with --force-unlock$/);
}

async function seqs(repo: string): Promise<number[]> {
  return (await log({ store: await cliStore(repo) })).entries.map((e) => e.seq);
}

for (const kind of ['fs', 's3'] as const) {
  describe(`repository lock on the command line (${kind} store)`, () => {
    async function freshRepo(name: string): Promise<{ repo: string; work: string }> {
      const n = ++counter;
      const work = join(fixture.dir, `${kind}-${name}-${n}`);
      await mkdir(work, { recursive: true });
      return { repo: kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/${name}-${n}`, work };
    }

    it('backup while another writer holds the lock: exit 8 naming it; --force-unlock goes ahead', async () => {
      const { repo, work } = await freshRepo('held');
      const source = join(work, 'disk.img');
      await writeFile(source, makeImage({ size: MiB, regionSize: REGION, seed: counter }));
      expect((await cli('--repo', repo, 'init', '--from', source, '--region-size', '64KiB')).code).toBe(EXIT.ok);

      const store = await cliStore(repo);
      const holder = await acquireWriterLock(store, { command: 'scan' });
      try {
        const refused = await cli('--repo', repo, 'backup', source);
        expectLockedLine(refused, new RegExp(`locked by cdp-s3 scan \\(pid ${process.pid} on host ${hostname()}\\) since \\d{4}-\\d\\d-\\d\\dT`));
        const json = await cli('--repo', repo, '--json', 'backup', source);
        expect(json.code).toBe(EXIT.locked);
        expect(await seqs(repo)).toEqual([]);

        const forced = await cli('--repo', repo, '--force-unlock', '--json', 'backup', source);
        expect(forced.code, forced.stderr).toBe(EXIT.ok);
        expect((JSON.parse(forced.stdout) as { seq: number }).seq).toBe(1);
        expect(await seqs(repo)).toEqual([1]);
        expect(await listLocks(store)).toEqual([]);
      } finally {
        await holder.release().catch(() => undefined);
      }
      // Without a lock in the way, backups need no --force-unlock.
      expect((await cli('--repo', repo, 'backup', source)).code).toBe(EXIT.ok);
    });

    it('a lock left by a SIGKILLed backup: taken over on this host (the process is gone); from another host it blocks until --force-unlock', async () => {
      for (let attempt = 0; attempt < 3; attempt++) {
        const { repo, work } = await freshRepo(`killed-${attempt}`);
        const size = (32 << attempt) * MiB;
        const source = join(work, 'disk.img');
        await writeFile(source, '');
        await truncate(source, size);
        expect((await cli('--repo', repo, 'init', '--from', source)).code).toBe(EXIT.ok);
        const handle = await open(source, 'r+');
        const chunk = Buffer.alloc(8 * MiB);
        for (let offset = 0; offset < size; offset += chunk.length) await handle.write(randomFillSync(chunk), 0, chunk.length, offset);
        await handle.close();

        const store = await cliStore(repo);
        const child = spawnCli(['--repo', repo, '--no-progress', 'backup', source]);
        child.stdout!.resume();
        child.stderr!.resume();
        const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
          child.on('close', (code, signal) => resolve({ code, signal })),
        );
        // Kill it as soon as it holds the lock, mid-way through reading the disk.
        await waitUntil(
          async () => child.exitCode !== null || (await listLocks(store)).some((e) => e.lock?.pid === child.pid && e.lock?.state === 'held'),
          'the backup to hold the lock',
          5,
        );
        child.kill('SIGKILL');
        const { code, signal } = await exited;
        if (code === EXIT.ok) continue; // finished before the kill: try a bigger disk
        expect({ code, signal }).toEqual({ code: null, signal: 'SIGKILL' });

        const left = await listLocks(store);
        expect(left.map((e) => [e.lock?.pid, e.lock?.command, e.lock?.state, e.lock?.host])).toEqual([[child.pid, 'backup', 'held', hostname()]]);
        const leftover = left[0]!;
        // The same lock as if the killed writer had run on another host: it blocks.
        await store.put(leftover.key, encodeLock({ ...leftover.lock!, host: 'elsewhere' }));
        const refused = await cli('--repo', repo, 'backup', source);
        expectLockedLine(refused, new RegExp(`locked by cdp-s3 backup \\(pid ${child.pid} on host elsewhere\\)`));
        expect(await seqs(repo)).toEqual([]);
        const forced = await cli('--repo', repo, '--force-unlock', '--json', 'backup', source);
        expect(forced.code, forced.stderr).toBe(EXIT.ok);
        expect((JSON.parse(forced.stdout) as { seq: number }).seq).toBe(1);
        expect(await listLocks(store)).toEqual([]);
        // On this host, a lock whose process is gone is taken over without --force-unlock.
        await store.put(leftover.key, encodeLock(leftover.lock!));
        const next = await cli('--repo', repo, '--json', 'backup', source);
        expect(next.code, next.stderr).toBe(EXIT.ok);
        expect((JSON.parse(next.stdout) as { seq: number }).seq).toBe(2);
        expect(await listLocks(store)).toEqual([]);
        return;
      }
      throw new Error('every backup finished before SIGKILL arrived; cannot test the leftover lock');
    });
  });
}
