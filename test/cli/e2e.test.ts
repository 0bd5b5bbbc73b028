// End to end through the command line (e2e-suite.ts), against the local store and s3rver on
// 127.0.0.1. test/rgw.test.ts runs the same suite against Ceph RGW.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { type S3Server, s3ServerEnv, startS3Server } from '../../src/dev/s3-server.js';
import { describeEndToEnd } from './e2e-suite.js';

let dir: string;
let server: S3Server;
const savedEnv = { ...process.env };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-e2e-'));
  server = await startS3Server({ buckets: ['e2e'] });
  Object.assign(process.env, s3ServerEnv(server));
  delete process.env['AWS_CA_BUNDLE'];
});

afterAll(async () => {
  process.env = savedEnv;
  await server?.stop();
  await rm(dir, { recursive: true, force: true });
});

describeEndToEnd('fs', () => dir, () => join(dir, 'repo-e2e'));
describeEndToEnd('s3', () => dir, () => 's3://e2e/hosts/a/disk0');
