// `cdp-s3 protect --spool-dir`: a directory that is not the spool's own is refused with one line
// and exit code 2, before anything is created, and what is in it stays.

import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { openStore } from '../../src/store/open.js';
import { cli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
const fixture = useS3Fixture('protectspooldir', []);

describe('cdp-s3 protect --spool-dir', () => {
  it('refuses the DRL\'s directory and a directory holding other files (exit code 2, one line), touching nothing', async () => {
    const work = fixture.dir;
    const repoUrl = join(work, 'repo');
    const store = openStore(repoUrl);
    const source = join(work, 'disk.img');
    await writeFile(source, makeImage({ size: 16 * REGION, regionSize: REGION, seed: 1 }));
    await init({ store, from: source, regionSize: REGION });
    await backup({ store, source, workers: 1 });
    const state = join(work, 'state');
    await mkdir(state);
    await writeFile(join(state, 'keep.txt'), 'keep');
    for (const [args, message] of [
      [['--drl', join(state, 'disk.drl'), '--spool-dir', state], /spool directory .*state also holds the dirty region log/],
      [['--drl', join(work, 'disk.drl'), '--spool-dir', state], /spool directory .*state holds files that are not spool segments \(keep\.txt\)/],
    ] as const) {
      const result = await cli('--repo', repoUrl, 'protect', source, '--listen', '127.0.0.1:0', ...args);
      expect(result.code, result.stderr).toBe(2);
      const lines = result.stderr.trimEnd().split('\n');
      expect(lines, result.stderr).toHaveLength(1);
      expect(lines[0]).toMatch(message);
      expect(lines[0]).toMatch(/give --spool-dir a directory of its own/);
    }
    expect(await readdir(state)).toEqual(['keep.txt']);
    expect((await readdir(work)).sort()).toEqual(['disk.img', 'repo', 'state']); // no DRL created
  });
});
