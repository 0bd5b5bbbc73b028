// One S3 server and one scratch directory per test file: started in beforeAll, with the AWS
// environment pointed at the server, and everything undone in afterAll. Tests that run against
// both stores get a scratch repository of either kind from it.

import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { type S3Server, s3ServerEnv, startS3Server } from '../../src/dev/s3-server.js';
import { openStore } from '../../src/store/open.js';
import type { ObjectStore } from '../../src/store/types.js';
import { FsRawObjects, type RawObjects, S3RawObjects } from './raw-objects.js';

export interface ScratchRepository {
  /** The scratch directory `<kind>-<n>` (the local repository is its `repo`). */
  work: string;
  /** --repo value. */
  repoUrl: string;
  store: ObjectStore;
  /** Its objects, bypassing cdp-s3. */
  raw: RawObjects;
}

export interface S3Fixture {
  /** The scratch directory (valid inside tests). */
  readonly dir: string;
  readonly server: S3Server;
  /** Called in afterAll before the server stops. */
  onTeardown(cleanup: () => void | Promise<void>): void;
  /** A new scratch directory and an (uninitialized) repository: in it, or at s3://<bucket>/repo-<n>. */
  repository(kind: 'fs' | 's3', bucket: string, n: number): Promise<ScratchRepository>;
}

export function useS3Fixture(name: string, buckets: string[]): S3Fixture {
  const savedEnv = { ...process.env };
  const cleanups: Array<() => void | Promise<void>> = [];
  let dir: string | undefined;
  let server: S3Server | undefined;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), `cdp-${name}-`));
    server = await startS3Server({ buckets });
    Object.assign(process.env, s3ServerEnv(server));
    delete process.env['AWS_CA_BUNDLE'];
  });
  afterAll(async () => {
    process.env = savedEnv;
    for (const cleanup of cleanups) await cleanup();
    await server?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });
  return {
    get dir() {
      if (dir === undefined) throw new Error('the fixture is set up in beforeAll');
      return dir;
    },
    get server() {
      if (server === undefined) throw new Error('the fixture is set up in beforeAll');
      return server;
    },
    onTeardown(cleanup) {
      cleanups.push(cleanup);
    },
    async repository(kind, bucket, n) {
      const work = join(this.dir, `${kind}-${n}`);
      await mkdir(work, { recursive: true });
      const repoUrl = kind === 'fs' ? join(work, 'repo') : `s3://${bucket}/repo-${n}`;
      const store = openStore(repoUrl);
      let raw: RawObjects;
      if (kind === 'fs') raw = new FsRawObjects(repoUrl);
      else {
        const s3 = new S3RawObjects(bucket, `repo-${n}`, this.server.endpoint);
        cleanups.push(() => s3.destroy());
        raw = s3;
      }
      return { work, repoUrl, store, raw };
    },
  };
}
