// Everything that runs against Ceph RGW, a real S3 server (src/dev/ceph-rgw.ts), on 127.0.0.1:
// the store conformance suite, what only a real server shows (signatures, conditional puts
// above the multipart threshold), the end-to-end CLI suite, and the AWS CLI's view of it.
//
// One file, so one cluster per test run: starting it takes ~15-25 s, which runs alongside the
// other test files instead of before all of them (as a vitest globalSetup would), and a run of
// other files alone does not pay for it.
//
// Without the Ceph programs the file is skipped with a message naming them, except with CI=true
// (.ci/run installs them): then a missing or failing RGW fails the run.

import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../src/cli/exit-codes.js';
import { type CephRgw, cephRgwEnv, missingCephPrograms, startCephRgw } from '../src/dev/ceph-rgw.js';
import { S3Store, type S3StoreOptions } from '../src/store/s3.js';
import { describeEndToEnd } from './cli/e2e-suite.js';
import { describeObjectLock } from './repo/object-lock-suite.js';
import { cli } from './helpers/cli.js';
import { makeImage } from './helpers/images.js';
import { skipOutsideCi, skipTitle } from './helpers/requirements.js';
import { S3RawObjects, deleteS3Prefix, snapshot } from './helpers/raw-objects.js';
import { collect, describeStoreConformance, expectStoreError } from './store/conformance.js';

const BUCKET = 'cdp-test';
const E2E_BUCKET = 'e2e';
const AWS_CLI = '/usr/bin/aws';
const MiB = 1024 * 1024;

const missing = missingCephPrograms();
const cephMissing = missing.length > 0 ? `${missing.join(', ')} not installed; Debian packages ceph-mon, ceph-osd, radosgw` : undefined;

describe('startCephRgw', () => {
  it('refuses to start without the Ceph programs, naming them and the packages', async () => {
    const savedPath = process.env['PATH'];
    const empty = await mkdtemp(join(tmpdir(), 'cdp-no-ceph-'));
    process.env['PATH'] = empty;
    try {
      expect(missingCephPrograms()).toEqual(['monmaptool', 'ceph-mon', 'ceph', 'ceph-osd', 'radosgw', 'radosgw-admin']);
      await expect(startCephRgw()).rejects.toThrow(/needs monmaptool, ceph-mon, ceph, ceph-osd, radosgw, radosgw-admin on PATH: install the Debian packages ceph-mon, ceph-osd and radosgw/);
    } finally {
      process.env['PATH'] = savedPath;
      await rm(empty, { recursive: true });
    }
  });
});

describe.skipIf(skipOutsideCi(cephMissing))(skipTitle('Ceph RGW', cephMissing), () => {
  let rgw: CephRgw;
  let dir: string;
  const savedEnv = { ...process.env };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'cdp-rgw-'));
    rgw = await startCephRgw({ buckets: [BUCKET, E2E_BUCKET] });
    Object.assign(process.env, cephRgwEnv(rgw));
    delete process.env['AWS_CA_BUNDLE'];
  }, 300_000);

  afterAll(async () => {
    process.env = savedEnv;
    await rgw?.stop();
    if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  });

  const clientWith = (secretAccessKey = rgw.secretAccessKey): S3Client =>
    new S3Client({
      endpoint: rgw.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      maxAttempts: 1,
      credentials: { accessKeyId: rgw.accessKeyId, secretAccessKey },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });

  const makeStore = (options: Partial<S3StoreOptions> = {}): S3Store =>
    new S3Store({ bucket: BUCKET, prefix: `t-${randomUUID()}/`, endpoint: rgw.endpoint, ...options });

  /** Removes everything under the store's prefix. */
  async function emptyPrefix(store: S3Store): Promise<void> {
    const client = clientWith();
    await deleteS3Prefix(client, BUCKET, store.location.slice(`s3://${BUCKET}/`.length));
    client.destroy();
  }

  describeStoreConformance(
    'S3Store on Ceph RGW',
    async () => {
      const store = makeStore();
      return { store, cleanup: () => emptyPrefix(store) };
    },
    // Unlike s3rver, RGW refuses a PutObject with If-None-Match: * on an existing key (412) and
    // lists in byte order.
    { conditionalWrites: true, byteOrderListing: true, retentionWithoutLock: 'refused', listVersions: true },
  );

  describe('S3Store on Ceph RGW', () => {
    it('reports a wrong secret key as auth; a HEAD (no error body) names the HTTP status', async () => {
      // s3rver checks no signatures, so only a real server can refuse this one.
      const client = clientWith('not-the-secret');
      const store = makeStore({ client });
      const headError = await expectStoreError(store.head('k'), 'auth');
      expect(headError.message).toMatch(/denied \(HTTP 403\)/);
      expect(headError.message).not.toMatch(/Unknown/);
      const getError = await expectStoreError(store.get('k'), 'auth');
      expect(getError.message).toMatch(/denied \(SignatureDoesNotMatch\)/);
      client.destroy();
    });

    it('reports a missing bucket as no-bucket', async () => {
      const store = makeStore({ bucket: 'no-such-bucket' });
      expect((await expectStoreError(store.get('k'), 'no-bucket')).message).toMatch(/no-such-bucket.*create it/);
      await expectStoreError(store.put('k', new Uint8Array(1)), 'no-bucket');
      await expectStoreError(collect(store.list('')), 'no-bucket');
    });

    it("reports a refusal with RGW's empty error message by its code, without the SDK's 'UnknownError'", async () => {
      const store = makeStore();
      const error = await expectStoreError(store.put('k'.repeat(1100), new Uint8Array(1)), 'permanent');
      expect(error.message).toMatch(/: InvalidObjectName \(HTTP 400\)$/);
    });

    it('ifAbsent refuses an existing key above the multipart threshold too', async () => {
      // RGW ignores If-None-Match on CompleteMultipartUpload: a conditional multipart upload
      // would silently replace the object.
      const store = makeStore({ multipartThreshold: 6 * MiB, partSize: 5 * MiB });
      const original = randomBytes(7 * MiB);
      await store.put('big', original, { ifAbsent: true });
      await expectStoreError(store.put('big', randomBytes(7 * MiB), { ifAbsent: true }), 'exists');
      expect(Buffer.from(await store.get('big')).equals(original)).toBe(true);
      await emptyPrefix(store);
    });

    it('uploads bodies above the threshold in parts and reads them back bit-exact', async () => {
      const store = makeStore({ multipartThreshold: 6 * MiB, partSize: 5 * MiB });
      const body = randomBytes(13 * MiB + 5);
      await store.put('parts', body);
      expect(Buffer.from(await store.get('parts')).equals(body)).toBe(true);
      const middle = await store.get('parts', { range: { offset: 5 * MiB - 3, length: 7 } });
      expect(Buffer.from(middle).equals(body.subarray(5 * MiB - 3, 5 * MiB + 4))).toBe(true);
      expect(await collect(store.list(''))).toEqual([{ key: 'parts', size: body.length }]);
      await emptyPrefix(store);
    });
  });

  describe('cdp-s3 on Ceph RGW', () => {
    it('init with a wrong secret key exits with the store code, says the HTTP status, and writes nothing', async () => {
      const source = join(dir, 'bad-secret.img');
      await writeFile(source, makeImage({ size: 256 * 1024, regionSize: 64 * 1024, seed: 3 }));
      const raw = new S3RawObjects(BUCKET, 'bad-secret', rgw.endpoint, rgw);
      const before = await snapshot(raw);
      process.env['AWS_SECRET_ACCESS_KEY'] = 'not-the-secret';
      try {
        const result = await cli('--repo', `s3://${BUCKET}/bad-secret`, 'init', '--from', source, '--region-size', '64KiB');
        expect(result.code, result.stderr).toBe(EXIT.store);
        expect(result.stderr).toMatch(/denied \(HTTP 403\)/);
        expect(result.stderr.trim().split('\n')).toHaveLength(1);
      } finally {
        process.env['AWS_SECRET_ACCESS_KEY'] = rgw.secretAccessKey;
      }
      expect(await snapshot(raw)).toEqual(before);
      raw.destroy();
    });
  });

  describeEndToEnd(
    'rgw',
    () => dir,
    () => `s3://${E2E_BUCKET}/hosts/a/disk0`,
  );

  describeObjectLock(() => ({ endpoint: rgw.endpoint, dir, plainBucket: BUCKET, client: () => clientWith() }));

  const hasCli = existsSync(AWS_CLI);
  describe.skipIf(!hasCli)(`the AWS CLI against Ceph RGW${hasCli ? '' : ` (skipped: ${AWS_CLI} missing)`}`, () => {
    // Debian's aws CLI crashes printing RGW's errors (their <Message> is empty), so these
    // checks rely on its exit codes only.
    const aws = async (args: string[], secret = rgw.secretAccessKey): Promise<{ code: number; stdout: Buffer }> => {
      const env: NodeJS.ProcessEnv = { ...process.env, ...cephRgwEnv(rgw), AWS_SECRET_ACCESS_KEY: secret };
      delete env['AWS_CA_BUNDLE'];
      try {
        const { stdout } = await promisify(execFile)(AWS_CLI, ['--endpoint-url', rgw.endpoint, ...args], { env, encoding: 'buffer', maxBuffer: 64 * MiB });
        return { code: 0, stdout };
      } catch (error) {
        const code = (error as { code?: unknown }).code;
        if (typeof code !== 'number') throw error;
        return { code, stdout: Buffer.alloc(0) };
      }
    };

    it('reads back what the adapter wrote, refuses If-None-Match on it, and refuses a wrong secret', async () => {
      const store = makeStore();
      const body = randomBytes(3 * MiB + 17);
      await store.put('cli/object', body);
      const key = store.location.slice(`s3://${BUCKET}/`.length) + 'cli/object';
      const head = await aws(['s3api', 'head-object', '--bucket', BUCKET, '--key', key]);
      expect(head.code).toBe(0);
      expect((JSON.parse(head.stdout.toString()) as { ContentLength: number }).ContentLength).toBe(body.length);
      const copy = await aws(['s3', 'cp', `s3://${BUCKET}/${key}`, '-']);
      expect(copy.code).toBe(0);
      expect(copy.stdout.equals(body)).toBe(true);
      const bodyFile = join(dir, 'aws-cli-body');
      await writeFile(bodyFile, 'replacement');
      expect((await aws(['s3api', 'put-object', '--bucket', BUCKET, '--key', key, '--body', bodyFile, '--if-none-match', '*'])).code).not.toBe(0);
      expect((await aws(['s3api', 'head-object', '--bucket', BUCKET, '--key', key], 'not-the-secret')).code).not.toBe(0);
      expect(Buffer.from(await store.get('cli/object')).equals(body)).toBe(true);
      await emptyPrefix(store);
    });
  });
});
