// Files that hold disk contents are private to their owner whatever the umask: a local
// repository (objects 0600, directories 0700), the dirty region log, and protect's outage spool,
// as restored files already are.

import { mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { ProtectedVolume } from '../../src/core/protect.js';
import { forceUnlock } from '../../src/repo/lock.js';
import { openStore } from '../../src/store/open.js';
import { FaultStore } from '../helpers/fault-store.js';
import { makeImage } from '../helpers/images.js';

const REGION = 64 * 1024;
const REGIONS = 16;

/** Mode bits of every file and directory under `root` (and root itself), by relative path. */
async function modesUnder(root: string): Promise<Map<string, { mode: number; dir: boolean }>> {
  const modes = new Map<string, { mode: number; dir: boolean }>();
  const top = await stat(root);
  modes.set('.', { mode: top.mode & 0o777, dir: true });
  for (const name of await readdir(root, { recursive: true })) {
    const info = await stat(join(root, name));
    modes.set(relative(root, join(root, name)), { mode: info.mode & 0o777, dir: info.isDirectory() });
  }
  return modes;
}

function expectPrivate(modes: Map<string, { mode: number; dir: boolean }>): void {
  for (const [path, { mode, dir }] of modes) expect(mode.toString(8), `${path} (${dir ? 'directory' : 'file'})`).toBe(dir ? '700' : '600');
}

describe('file modes under umask 022', () => {
  let work: string;
  let savedUmask: number;
  beforeAll(async () => {
    savedUmask = process.umask(0o022);
    work = await mkdtemp(join(tmpdir(), 'cdp-modes-'));
  });
  afterAll(async () => {
    process.umask(savedUmask);
    await rm(work, { recursive: true, force: true });
  });

  it('a local repository, the DRL and the outage spool are readable by their owner only', async () => {
    const repoDir = join(work, 'repos', 'disk');
    const store = openStore(repoDir);
    const source = join(work, 'disk.img');
    await writeFile(source, makeImage({ size: REGIONS * REGION, regionSize: REGION, seed: 11, zero: 0, repeated: 0 }));
    await init({ store, from: source, regionSize: REGION });
    await backup({ store, source, workers: 1 });

    // A protect whose store refuses data puts: each interval goes to the spool.
    const down = new FaultStore(store, {
      beforePut: (key) => {
        if (!key.startsWith('locks/')) throw new Error('connect ECONNREFUSED (injected)');
      },
    });
    const drl = join(work, 'disk.drl');
    const spoolDir = join(work, 'var', 'spool');
    const volume = await ProtectedVolume.open({ store: down, source, drl, spoolDir });
    await volume.write(1 * REGION, Buffer.alloc(REGION, 0xa1), false);
    expect(await volume.sealAndShip()).toBeUndefined(); // fails: the outage begins, its point waits in the spool
    await volume.write(2 * REGION, Buffer.alloc(REGION, 0xb2), false);
    expect(await volume.sealAndShip()).toBeUndefined(); // spooled
    expect(volume.status().spooledPoints).toBe(2);

    const repo = await modesUnder(join(work, 'repos'));
    expect([...repo.keys()].some((path) => path.startsWith('disk/packs/'))).toBe(true);
    expectPrivate(repo);
    expect(((await stat(drl)).mode & 0o777).toString(8)).toBe('600');
    const spool = await modesUnder(join(work, 'var'));
    expect([...spool.keys()].filter((path) => /\.(bin|idx)$/.test(path))).toHaveLength(4); // two segments, each data and index
    expectPrivate(spool);

    await volume.close();
    await forceUnlock(store);
  });
});
