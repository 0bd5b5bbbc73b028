// One protect test setup shared by the protect test files: a 32-region image, a repository
// (local or on the file's s3rver bucket) with or without a base, and restoring a point to bytes.

import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { openStore } from '../../src/store/open.js';
import type { ObjectStore } from '../../src/store/types.js';
import { makeImage } from './images.js';
import { useS3Fixture } from './s3-fixture.js';

export const REGION = 64 * 1024;
export const REGIONS = 32;
export const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

export interface ProtectFixtureOptions {
  /** Take a base backup (default true); false leaves the repository initialized only. */
  base?: boolean;
  /** Shares of zero and repeated regions in the image (default none). */
  zero?: number;
  repeated?: number;
}

/** `name` is also the s3rver bucket. Call at the top of a test file (it registers hooks). */
export function useProtectFixture(name: string, options: ProtectFixtureOptions = {}) {
  const fixture = useS3Fixture(name, [name]);
  let counter = 0;
  return {
    fixture,
    async make(kind: 'fs' | 's3') {
      const n = ++counter;
      const work = join(fixture.dir, `${kind}-${n}`);
      await mkdir(work, { recursive: true });
      const store = openStore(kind === 'fs' ? join(work, 'repo') : `s3://${name}/r-${n}`);
      const source = join(work, 'disk.img');
      const image = makeImage({ size: REGIONS * REGION, regionSize: REGION, seed: n, zero: options.zero ?? 0, repeated: options.repeated ?? 0 });
      await writeFile(source, image);
      // Uncompressed: tests count the bytes each write ships (its blocks, in a frame).
      await init({ store, from: source, regionSize: REGION, compression: 'off' });
      if (options.base !== false) await backup({ store, source, workers: 2 });
      return { work, store, source, drl: join(work, 'disk.drl') };
    },
    async restoreBytes(store: ObjectStore, work: string, at: string, allowSuspect = false): Promise<Buffer> {
      const plan = await planRestore({ store, at: parsePointSelector(at), allowSuspect });
      const target = join(work, `r-${++counter}.img`);
      await executeRestore(plan, { to: target, workers: 2 });
      return readFile(target);
    },
  };
}
