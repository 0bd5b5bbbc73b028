// restore --reuse-target: a target that holds an older copy is hashed, and only the regions that
// differ from the chosen point in time are downloaded and written. The result is bit-exact.

import { createHash } from 'node:crypto';
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { openStore } from '../../src/store/open.js';
import { cli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
const REGIONS = 64;
const fixture = useS3Fixture('reuse', ['reuse']);
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

for (const kind of ['fs', 's3'] as const) {
  describe(`restore --reuse-target (${kind} store)`, () => {
    it('downloads only the regions that differ, and the result is bit-exact', async () => {
      const work = join(fixture.dir, kind);
      await mkdir(work, { recursive: true });
      const repoUrl = kind === 'fs' ? join(work, 'repo') : 's3://reuse/disk';
      const store = openStore(repoUrl);
      const image = makeImage({ size: REGIONS * REGION, regionSize: REGION, seed: 3, zero: 0.2, repeated: 0.1 });
      const source = join(work, 'disk.img');
      await writeFile(source, image);
      await init({ store, from: source, regionSize: REGION });
      await backup({ store, source, workers: 2 });
      const old = Buffer.from(image);
      // Point 2: three regions rewritten, one zeroed, one made a copy of another.
      for (const r of [2, 30, 61]) image.fill(r, r * REGION, r * REGION + 4096);
      image.fill(0, 10 * REGION, 11 * REGION);
      image.copy(image, 40 * REGION, 2 * REGION, 3 * REGION);
      await writeFile(source, image);
      await backup({ store, source, workers: 2 });

      const target = join(work, 'target.img');
      await writeFile(target, old);
      const plan = await planRestore({ store, at: parsePointSelector('latest') });
      const result = await executeRestore(plan, { to: target, reuseTarget: true, workers: 2 });
      expect(sha(await readFile(target))).toBe(sha(image));
      expect(result.regionsReused).toBe(REGIONS - 5);
      expect(result.bytesDownloaded).toBeLessThanOrEqual(4 * REGION); // 10 is zero; 40 and 2 share bytes

      // Back to point 1 the same way, through the CLI.
      const back = await cli('--repo', repoUrl, '--json', 'restore', '--at', '1', '--to', target, '--reuse-target');
      expect(back.code, back.stderr).toBe(0);
      expect(sha(await readFile(target))).toBe(sha(old));
      expect((JSON.parse(back.stdout) as { regionsReused: number }).regionsReused).toBe(REGIONS - 5);

      // A file of another size is no older copy of the volume: only with --force is a shorter one
      // grown and a longer one cut to the volume's size.
      await truncate(target, 5 * REGION + 17);
      expect((await cli('--repo', repoUrl, 'restore', '--at', 'latest', '--to', target, '--reuse-target')).code).toBe(4);
      expect((await cli('--repo', repoUrl, 'restore', '--at', 'latest', '--to', target, '--reuse-target', '--force')).code).toBe(0);
      expect(sha(await readFile(target))).toBe(sha(image));
      await writeFile(target, Buffer.concat([image, Buffer.alloc(REGION, 1)]));
      expect((await cli('--repo', repoUrl, 'restore', '--at', 'latest', '--to', target, '--reuse-target')).code).toBe(4);
      expect((await cli('--repo', repoUrl, 'restore', '--at', 'latest', '--to', target, '--reuse-target', '--force')).code).toBe(0);
      expect(sha(await readFile(target))).toBe(sha(image));
    });
  });
}
