// SIGINT and SIGTERM stop every command, also one waiting on a store that never answers: the
// real command as a child process, its store s3rver behind a proxy that holds chosen requests
// forever. The signal is sent when the held request arrives, so nothing depends on timing.
// Exit code 130, and nothing committed.

import type { ChildProcess } from 'node:child_process';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { openStore } from '../../src/store/open.js';
import { spawnCli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { type FaultProxy, type RequestMatcher, startFaultProxy } from '../helpers/fault-proxy.js';

const BUCKET = 'signals';
const REGION = 64 * 1024;
const fixture = useS3Fixture('signals', [BUCKET]);
let counter = 0;
const proxies: FaultProxy[] = [];

afterEach(async () => {
  for (const proxy of proxies.splice(0)) await proxy.close();
});

function exited(child: ChildProcess): Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> {
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  child.stdout!.resume();
  return new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stderr })));
}

/** A repository prefix with `backups` points in time of a small image, made directly against s3rver. */
async function makeRepo(backups: number): Promise<{ work: string; repo: string; prefix: string; source: string }> {
  const n = ++counter;
  const work = join(fixture.dir, `w-${n}`);
  await mkdir(work, { recursive: true });
  const prefix = `r-${n}`;
  const repo = `s3://${BUCKET}/${prefix}`;
  const source = join(work, 'disk.img');
  await writeFile(source, makeImage({ size: 1024 * 1024, regionSize: REGION, seed: n }));
  if (backups >= 0) await init({ store: openStore(repo), from: source, regionSize: REGION });
  for (let i = 0; i < backups; i++) await backup({ store: openStore(repo), source, workers: 1 });
  return { work, repo, prefix, source };
}

async function keys(repo: string): Promise<string[]> {
  const found: string[] = [];
  for await (const object of openStore(repo).list('')) found.push(object.key);
  return found.sort();
}

/** Runs the command with its store behind a proxy that holds what `stall` picks; signals it when the first such request arrives. */
async function interrupt(args: string[], stall: RequestMatcher, signal: NodeJS.Signals) {
  const proxy = await startFaultProxy({ target: fixture.server.endpoint, seed: 0 });
  proxy.stallEvery(stall);
  proxies.push(proxy);
  const child = spawnCli(['--endpoint', proxy.endpoint, '--no-progress', ...args]);
  const done = exited(child);
  const held = await Promise.race([proxy.firstStall(), done.then((r) => Promise.reject(new Error(`exited before the stall: ${r.code} ${r.stderr}`)))]);
  child.kill(signal);
  const result = await done;
  expect({ code: result.code, signal: result.signal }, result.stderr).toEqual({ code: EXIT.interrupted, signal: null });
  expect(result.stderr).toMatch(new RegExp(`cdp-s3: ${signal}: cancelling`));
  return { held, stderr: result.stderr };
}

describe('SIGINT and SIGTERM stop a command whose store never answers (exit 130, nothing committed)', () => {
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    it(`init waiting on its config put: ${signal}`, async () => {
      const fx = await makeRepo(-1);
      const { held } = await interrupt(['--repo', fx.repo, 'init', '--from', fx.source], (method) => method === 'PUT', signal);
      // An encrypted repository's first object is its key file, then the config.
      expect(held.url.split('?')[0]).toMatch(new RegExp(`^/${BUCKET}/${fx.prefix}/keys/[0-9a-f]{16}$`));
      expect(await keys(fx.repo)).toEqual([]);
    });

    it(`backup waiting on a pack upload: ${signal}`, async () => {
      const fx = await makeRepo(0);
      const before = await keys(fx.repo);
      const { held, stderr } = await interrupt(['--repo', fx.repo, 'backup', fx.source], (method, url) => method === 'PUT' && url.includes('/packs/'), signal);
      expect(held.url).toContain(`/${fx.prefix}/packs/`);
      expect(stderr).toMatch(/backup cancelled; nothing was committed/);
      expect((await keys(fx.repo)).filter((k) => k.startsWith('deltas/') || k.startsWith('spans/'))).toEqual([]);
      expect((await keys(fx.repo)).filter((k) => !k.startsWith('packs/'))).toEqual(before);
    });

    it(`restore waiting on a pack read: ${signal}`, async () => {
      const fx = await makeRepo(1);
      const target = join(fx.work, 'restored.img');
      await interrupt(['--repo', fx.repo, 'restore', '--at', 'latest', '--to', target], (method, url) => method === 'GET' && url.includes('/packs/'), signal);
      expect(await readdir(fx.work)).toEqual(['disk.img']);
    });
  }

  it('log, verify and status waiting on the first request: SIGTERM', async () => {
    const fx = await makeRepo(1);
    const before = await keys(fx.repo);
    for (const command of [['log'], ['verify'], ['status']]) {
      await interrupt(['--repo', fx.repo, ...command], () => true, 'SIGTERM');
    }
    expect(await keys(fx.repo)).toEqual(before);
  });
});
