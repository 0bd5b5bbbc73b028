// `cdp-s3 protect` as a real process, driven by real NBD clients from Debian (qemu-io, qemu-img,
// nbdinfo, nbdcopy): writes through the export become points in time; SIGTERM drains; SIGKILL
// mid-way loses nothing that was acknowledged as durable.

import { type ChildProcess, execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { log } from '../../src/core/log.js';
import { openStore } from '../../src/store/open.js';
import { cli, spawnCli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { missingBinaries, requireOrSkip } from '../helpers/requirements.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { waitUntil } from '../helpers/wait.js';

const run = promisify(execFile);
const REGION = 64 * 1024;
const SIZE = 8 * 1024 * 1024;
const fixture = useS3Fixture('protectcli', ['protectcli']);
let counter = 0;
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

const CLIENTS_MISSING = missingBinaries('qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy');

async function makeRepo(kind: 'fs' | 's3') {
  const n = ++counter;
  const work = join(fixture.dir, `${kind}-${n}`);
  await mkdir(work, { recursive: true });
  const repoUrl = kind === 'fs' ? join(work, 'repo') : `s3://protectcli/r-${n}`;
  const store = openStore(repoUrl);
  const source = join(work, 'disk.img');
  await writeFile(source, makeImage({ size: SIZE, regionSize: REGION, seed: n }));
  await init({ store, from: source, regionSize: REGION });
  await backup({ store, source, workers: 2 });
  return { work, repoUrl, store, source };
}

/** Starts `cdp-s3 protect` and waits for its address. */
async function startProtect(repoUrl: string, source: string, extra: string[] = []): Promise<{ child: ChildProcess; url: string; stderr: () => string }> {
  const child = spawnCli(['--repo', repoUrl, '--json', 'protect', source, '--listen', '127.0.0.1:0', '--interval', '300ms', ...extra]);
  let stdout = '';
  let stderr = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      try {
        const info = JSON.parse(stdout) as { host: string; port: number };
        resolve(`nbd://${info.host}:${info.port}`);
      } catch {
        // not all of the JSON yet
      }
    });
    child.once('exit', (code) => reject(new Error(`protect exited with ${code}: ${stderr}`)));
  });
  return { child, url, stderr: () => stderr };
}

function exited(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', (code) => resolve(code))));
}

async function qemuIo(url: string, ...commands: string[]): Promise<string> {
  const args = ['-f', 'raw', '-t', 'none', ...commands.flatMap((c) => ['-c', c]), url];
  return (await run('qemu-io', args)).stdout;
}

for (const kind of ['fs', 's3'] as const) {
  describe(`cdp-s3 protect with real NBD clients (${kind} store)`, () => {
    it('writes, discards and zeroes through the export become points in time; SIGTERM drains', async (ctx) => {
      requireOrSkip(ctx, CLIENTS_MISSING);
      const f = await makeRepo(kind);
      const expected = await readFile(f.source);
      const p = await startProtect(f.repoUrl, f.source, ['--name', 'disk0']);
      try {
        // Writes, a discard and zeroes, through qemu-io; the expected image gets the same.
        await qemuIo(p.url, 'write -P 0xab 0 128k', 'write -P 0xcd 1000k 4k', 'discard 2M 192k', 'write -z 3M 64k', 'flush');
        expected.fill(0xab, 0, 128 * 1024);
        expected.fill(0xcd, 1000 * 1024, 1004 * 1024);
        expected.fill(0, 2 * 1024 * 1024, 2 * 1024 * 1024 + 192 * 1024);
        expected.fill(0, 3 * 1024 * 1024, 3 * 1024 * 1024 + 64 * 1024);
        const expectedFile = join(f.work, 'expected.img');
        await writeFile(expectedFile, expected);
        const compare = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', p.url, expectedFile]);
        expect(compare.stdout).toMatch(/Images are identical/);
        // The export is listed, by default and by name.
        const list = (await run('nbdinfo', ['--list', p.url])).stdout;
        expect(list).toMatch(/export="disk0"/);
        expect((await run('nbdinfo', ['--size', `${p.url}/disk0`])).stdout.trim()).toBe(String(SIZE));
        // nbdcopy out of and into the export.
        const out = join(f.work, 'copied-out.img');
        await run('nbdcopy', [p.url, out]);
        expect(sha(await readFile(out))).toBe(sha(expected));
        const incoming = makeImage({ size: SIZE, regionSize: REGION, seed: 99 });
        const inFile = join(f.work, 'incoming.img');
        await writeFile(inFile, incoming);
        await run('nbdcopy', [inFile, p.url]);
        expect(sha(await readFile(f.source))).toBe(sha(incoming));
      } finally {
        p.child.kill('SIGTERM');
      }
      expect(await exited(p.child)).toBe(0);
      // The drain shipped the last delta: the newest point in time is what the host wrote last.
      const restored = join(f.work, 'restored.img');
      const r = await cli('--repo', f.repoUrl, 'restore', '--at', 'latest', '--to', restored);
      expect(r.code, r.stderr).toBe(0);
      expect(sha(await readFile(restored))).toBe(sha(await readFile(f.source)));
      expect((await log({ store: f.store })).entries.length).toBeGreaterThan(1);
      const status = await cli('--repo', f.repoUrl, '--json', 'status');
      expect(JSON.parse(status.stdout)).toMatchObject({ protects: [expect.objectContaining({ running: false, lagMs: 0, drlRegions: 0 })] });
    });

    it('SIGUSR1 asks the running protect for an integrity scan, which repairs a change made behind its back', async (ctx) => {
      requireOrSkip(ctx, CLIENTS_MISSING);
      const f = await makeRepo(kind);
      const p = await startProtect(f.repoUrl, f.source);
      try {
        const { open } = await import('node:fs/promises');
        const file = await open(f.source, 'r+');
        await file.write(Buffer.alloc(100, 0xee), 0, 100, 5 * REGION); // behind cdp-s3's back
        await file.close();
        p.child.kill('SIGUSR1');
        let scans: Array<{ type: string; discrepancies?: number }> = [];
        await waitUntil(async () => {
          scans = (await log({ store: f.store })).timeline.filter((t) => t.type === 'scan') as typeof scans;
          // The record is put before protect logs the scan's result: wait for both.
          return (scans.length > 0 && /scan: \d+ regions/.test(p.stderr())) || p.child.exitCode !== null;
        }, 'the scan record and its log line', 50);
        expect(scans, p.stderr()).toEqual([expect.objectContaining({ type: 'scan', discrepancies: 1 })]);
        expect(p.stderr()).toMatch(/scan: \d+ regions, 1 differed/);
      } finally {
        p.child.kill('SIGTERM');
      }
      expect(await exited(p.child)).toBe(0);
      const restored = join(f.work, 'after-scan.img');
      expect((await cli('--repo', f.repoUrl, 'restore', '--at', 'latest', '--to', restored)).code).toBe(0);
      expect(sha(await readFile(restored))).toBe(sha(await readFile(f.source)));
    });

    it('SIGKILL mid-way, then a restart: the next point in time holds every write acknowledged as durable', async (ctx) => {
      requireOrSkip(ctx, CLIENTS_MISSING);
      const f = await makeRepo(kind);
      const first = await startProtect(f.repoUrl, f.source, ['--interval', '1h']); // nothing ships on its own
      await qemuIo(first.url, 'write -P 0x11 64k 256k', 'flush', 'write -P 0x22 1M 64k', 'flush');
      const acknowledged = await readFile(f.source);
      first.child.kill('SIGKILL');
      await exited(first.child);
      const second = await startProtect(f.repoUrl, f.source, ['--interval', '200ms']);
      second.child.kill('SIGTERM');
      expect(await exited(second.child)).toBe(0);
      const restored = join(f.work, 'after-crash.img');
      expect((await cli('--repo', f.repoUrl, 'restore', '--at', 'latest', '--to', restored)).code).toBe(0);
      expect(sha(await readFile(restored))).toBe(sha(acknowledged));
    });
  });
}

describe('cdp-s3 protect refuses bad input', () => {
  it('a missing or wrong-size source, a second protect (the lock), a foreign DRL, an address in use, a device without --drl', async () => {
    const f = await makeRepo('fs');
    const expectOneLine = (result: { code: number; stderr: string }, code: number, message: RegExp): void => {
      expect(result.code, result.stderr).toBe(code);
      const lines = result.stderr.trimEnd().split('\n').filter((l) => !l.startsWith('cdp-s3 protect: '));
      expect(lines, result.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(message);
    };
    expectOneLine(await cli('--repo', f.repoUrl, 'protect', join(f.work, 'nope.img'), '--listen', '127.0.0.1:0'), 4, /nope\.img does not exist; check the path/);
    const small = join(f.work, 'small.img');
    await writeFile(small, Buffer.alloc(REGION));
    expectOneLine(await cli('--repo', f.repoUrl, 'protect', small, '--listen', '127.0.0.1:0'), 4, /is 65536 bytes but the repository's volume is/);
    expectOneLine(await cli('--repo', f.repoUrl, 'protect', '/dev/loop0', '--listen', '127.0.0.1:0'), 2, /needs --drl FILE on persistent storage/);
    const foreign = join(f.work, 'foreign.drl');
    const { DirtyRegionLog } = await import('../../src/volume/dirty-region-log.js');
    await (await DirtyRegionLog.create(foreign, { volumeId: 'someone-else', regionCount: SIZE / REGION, regionSize: REGION })).close();
    expectOneLine(await cli('--repo', f.repoUrl, 'protect', f.source, '--drl', foreign, '--listen', '127.0.0.1:0'), 4, /belongs to volume someone-else/);
    expectOneLine(await cli('--repo', f.repoUrl, 'protect', f.source, '--interval', 'soon', '--listen', '127.0.0.1:0'), 2, /--interval "soon" is not a duration/);

    const first = await startProtect(f.repoUrl, f.source);
    try {
      const port = first.url.split(':').at(-1)!;
      // Another repository, same address: the address is in use.
      const other = await makeRepo('fs');
      expectOneLine(await cli('--repo', other.repoUrl, 'protect', other.source, '--listen', `127.0.0.1:${port}`), 2, /127\.0\.0\.1:\d+ is in use/);
      // The same repository: a second writer.
      expectOneLine(await cli('--repo', f.repoUrl, 'protect', f.source, '--listen', '127.0.0.1:0'), 8, /locked by cdp-s3 protect/);
    } finally {
      first.child.kill('SIGTERM');
    }
    expect(await exited(first.child)).toBe(0);
  });
});
