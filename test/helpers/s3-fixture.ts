// One S3 server and one scratch directory per test file: started in beforeAll, with the AWS
// environment pointed at the server, and everything undone in afterAll.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { type S3Server, s3ServerEnv, startS3Server } from '../../src/dev/s3-server.js';

export interface S3Fixture {
  /** The scratch directory (valid inside tests). */
  readonly dir: string;
  readonly server: S3Server;
  /** Called in afterAll before the server stops. */
  onTeardown(cleanup: () => void | Promise<void>): void;
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
  };
}
