// The S3 adapter against a real S3-compatible server (s3rver) on 127.0.0.1.

import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { S3Client } from '@aws-sdk/client-s3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError, StoreError } from '../../src/errors.js';
import { RetryingStore, type RetryInfo } from '../../src/store/retry.js';
import { S3Store, classifyS3Error, type S3StoreOptions } from '../../src/store/s3.js';
import { TimeoutStore } from '../../src/store/timeout.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { deleteS3Prefix } from '../helpers/raw-objects.js';
import { ManualClock } from '../helpers/manual-clock.js';
import { skipOutsideCi, skipTitle } from '../helpers/requirements.js';
import { s3ServerEnv, startS3Server, type S3Server } from '../helpers/s3-server.js';
import { outcome, turns, waitUntil } from '../helpers/wait.js';
import { collect, describeStoreConformance, expectStoreError } from './conformance.js';

const BUCKET = 'cdp-test';
const AWS_CLI = '/usr/bin/aws';
const MiB = 1024 * 1024;

let server: S3Server;

beforeAll(async () => {
  server = await startS3Server({ buckets: [BUCKET] });
  Object.assign(process.env, s3ServerEnv(server));
});

afterAll(async () => {
  await server?.stop();
});

function makeStore(options: Partial<S3StoreOptions> = {}): S3Store {
  return new S3Store({ bucket: BUCKET, prefix: `t-${randomUUID()}/`, endpoint: server.endpoint, ...options });
}

/** Removes everything under the store's prefix (s3rver keeps it on disk until stop() otherwise). */
async function emptyPrefix(store: S3Store): Promise<void> {
  const client = new S3Client({ endpoint: server.endpoint, forcePathStyle: true });
  await deleteS3Prefix(client, BUCKET, store.location.slice(`s3://${BUCKET}/`.length));
  client.destroy();
}

describeStoreConformance(
  'S3Store on s3rver',
  async () => {
    const store = makeStore();
    return { store, cleanup: () => emptyPrefix(store) };
  },
  // s3rver ignores If-None-Match (a second conditional put replaces the object) and lists by
  // walking its directories; real S3 and MinIO do both.
  { conditionalWrites: false, byteOrderListing: false, retentionWithoutLock: 'ignored', listVersions: false },
);

async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const address = probe.address();
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

describe('S3Store', () => {
  it("refuses a prefix or a key with '.', '..' or empty segments before sending anything", async () => {
    for (const prefix of ['../escape', 'a/../../b', './x', 'a//b']) {
      expect(() => makeStore({ prefix }), prefix).toThrow(/may not have empty, '\.' or '\.\.' segments/);
    }
    expect(() => makeStore({ bucket: '..' })).toThrow(/is not a bucket name/);
    const store = makeStore();
    for (const key of ['../otherrepo/obj', 'packs/../../x', 'a//b', '', './config']) {
      const error = await expectStoreError(store.get(key), 'permanent');
      expect(error.message).toContain('invalid key');
      await expectStoreError(store.put(key, new Uint8Array(1)), 'permanent');
    }
  });

  it('refuses an endpoint that is not an http(s) URL, and never names the user:password@ of one', async () => {
    for (const endpoint of ['not a url', 'ftp://user:secret@host/x', 'http://']) {
      expect(() => makeStore({ endpoint }), endpoint).toThrow(InvalidArgumentError);
      expect(() => makeStore({ endpoint }), endpoint).toThrow(/^S3 endpoint ".*" (is not a URL|has scheme ftp, not http or https): give an http:\/\/ or https:\/\/ URL$/);
      expect(() => makeStore({ endpoint })).not.toThrow(/secret/);
    }
    // A working endpoint with userinfo: requests work; messages show ***@ instead.
    const endpoint = server.endpoint.replace('http://', 'http://user:secret@');
    const store = makeStore({ endpoint });
    await store.put('k', new Uint8Array([7]));
    expect(Array.from(await store.get('k'))).toEqual([7]);
    const error = await expectStoreError(makeStore({ endpoint, bucket: 'no-such-bucket' }).get('k'), 'no-bucket');
    expect(error.message).toContain(server.endpoint.replace('http://', 'http://***@'));
    expect(error.message).not.toContain('secret');
    await emptyPrefix(store);
  });

  it('uses us-east-1 when neither the environment nor the shared config names a region (as --region promises), else theirs', async () => {
    const saved = { ...process.env };
    const dir = await mkdtemp(join(tmpdir(), 'cdp-region-'));
    let cleanup = async (): Promise<void> => {};
    try {
      for (const name of ['AWS_REGION', 'AWS_DEFAULT_REGION', 'AWS_PROFILE']) delete process.env[name];
      Object.assign(process.env, {
        AWS_CONFIG_FILE: join(dir, 'config'),
        AWS_SHARED_CREDENTIALS_FILE: join(dir, 'credentials'),
        AWS_EC2_METADATA_DISABLED: 'true',
      });
      await writeFile(join(dir, 'config'), '');
      await writeFile(join(dir, 'credentials'), '');
      const store = makeStore();
      await store.put('k', new Uint8Array([1, 2]));
      expect(Array.from(await store.get('k'))).toEqual([1, 2]);
      expect(await (store as unknown as { client: S3Client }).client.config.region()).toBe('us-east-1');
      cleanup = () => emptyPrefix(store); // its own client needs the region back

      // The SDK's chain still comes first: a region in the shared config file (a new one, not cached).
      process.env['AWS_CONFIG_FILE'] = join(dir, 'config-with-region');
      await writeFile(join(dir, 'config-with-region'), '[default]\nregion = eu-west-3\n');
      expect(await (makeStore() as unknown as { client: S3Client }).client.config.region()).toBe('eu-west-3');
      process.env['AWS_REGION'] = 'ap-south-1';
      expect(await (makeStore() as unknown as { client: S3Client }).client.config.region()).toBe('ap-south-1');
    } finally {
      process.env = saved;
      await cleanup();
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('reports a missing bucket as no-bucket, telling to create it', async () => {
    const store = makeStore({ bucket: 'no-such-bucket' });
    const error = await expectStoreError(store.get('k'), 'no-bucket');
    expect(error.message).toContain('no-such-bucket');
    expect(error.message).toMatch(/create it/);
    await expectStoreError(store.put('k', new Uint8Array(1)), 'no-bucket');
    await expectStoreError(collect(store.list('')), 'no-bucket');
  });

  it('reports a refused connection as unreachable, naming the endpoint, after retries', async () => {
    const endpoint = `http://127.0.0.1:${await closedPort()}`;
    const raw = makeStore({ endpoint });
    const error = await expectStoreError(raw.get('k'), 'unreachable');
    expect(error.message).toContain(endpoint);

    const retries: RetryInfo[] = [];
    const store = new RetryingStore(raw, { attempts: 3, baseDelayMs: 1, onRetry: (info) => retries.push(info) });
    const final = await expectStoreError(store.head('k'), 'unreachable');
    expect(retries.map((r) => r.attempt)).toEqual([1, 2]);
    expect(final.message).toMatch(/cannot reach .* \(gave up after 3 attempts\)$/);
  });

  it('reports an unknown access key as auth, pointing at the credential chain', async () => {
    const client = new S3Client({
      endpoint: server.endpoint,
      forcePathStyle: true,
      region: 'us-east-1',
      credentials: { accessKeyId: 'NOT-S3RVER', secretAccessKey: 'x' },
      maxAttempts: 1,
    });
    const store = makeStore({ client });
    const error = await expectStoreError(store.get('k'), 'auth');
    expect(error.message).toMatch(/AWS_ACCESS_KEY_ID/);
    client.destroy();
  });

  it('uploads bodies above the threshold in parts and reads them back bit-exact', async () => {
    const client = new S3Client({ endpoint: server.endpoint, forcePathStyle: true, maxAttempts: 1, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
    const commands: string[] = [];
    client.middlewareStack.add(
      (next, context) => async (args) => {
        commands.push(String(context.commandName));
        return next(args);
      },
      { step: 'initialize' },
    );
    const store = makeStore({ client, multipartThreshold: 6 * MiB, partSize: 5 * MiB });
    const body = randomBytes(13 * MiB);
    await store.put('big', body);
    expect(commands.filter((c) => c === 'UploadPartCommand')).toHaveLength(3);
    expect(commands).toContain('CompleteMultipartUploadCommand');
    const read = await store.get('big');
    expect(Buffer.from(read).equals(body)).toBe(true);
    const tail = await store.get('big', { range: { offset: 10 * MiB - 3, length: 7 } });
    expect(Buffer.from(tail).equals(body.subarray(10 * MiB - 3, 10 * MiB + 4))).toBe(true);
    await emptyPrefix(store);
    client.destroy();
  });

  it('sends a conditional put above the threshold as one PutObject (RGW ignores If-None-Match on multipart completion)', async () => {
    const client = new S3Client({ endpoint: server.endpoint, forcePathStyle: true, maxAttempts: 1, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
    const sent: Array<{ command: string; ifNoneMatch: unknown }> = [];
    client.middlewareStack.add(
      (next, context) => async (args) => {
        sent.push({ command: String(context.commandName), ifNoneMatch: (args.input as { IfNoneMatch?: unknown }).IfNoneMatch });
        return next(args);
      },
      { step: 'initialize' },
    );
    const store = makeStore({ client, multipartThreshold: 6 * MiB, partSize: 5 * MiB });
    const body = randomBytes(7 * MiB);
    await store.put('conditional-big', body, { ifAbsent: true });
    expect(sent).toEqual([{ command: 'PutObjectCommand', ifNoneMatch: '*' }]);
    expect(Buffer.from(await store.get('conditional-big')).equals(body)).toBe(true);
    await emptyPrefix(store);
    client.destroy();
  });

  it('turns a request cancelled in flight into AbortedError', async () => {
    const store = makeStore();
    await store.put('large', randomBytes(20 * MiB));
    // Between the store and s3rver, a proxy that passes the response's headers and first bytes
    // and holds back the rest: the GET is in flight, its body arriving, when the signal fires.
    const proxy = await startFaultProxy({ target: server.endpoint, seed: 0 });
    try {
      const held = proxy.holdNext((method) => method === 'GET');
      const prefix = store.location.slice(`s3://${BUCKET}/`.length);
      const proxied = new S3Store({ bucket: BUCKET, prefix, endpoint: proxy.endpoint });
      const controller = new AbortController();
      const pending = proxied.get('large', { signal: controller.signal });
      await held.sent;
      controller.abort();
      await expect(pending).rejects.toMatchObject({ code: 'ABORTED' });
    } finally {
      await proxy.close();
    }
    await emptyPrefix(store);
  });

  it('maps keys under the prefix and strips it from listings', async () => {
    const store = makeStore();
    await store.put('x/y', new Uint8Array([1, 2]));
    expect(await collect(store.list('x/'))).toEqual([{ key: 'x/y', size: 2 }]);
    expect(store.location).toMatch(new RegExp(`^s3://${BUCKET}/t-`));
    const root = new S3Store({ bucket: BUCKET, prefix: store.location.slice(`s3://${BUCKET}/`.length).replace(/\/$/, ''), endpoint: server.endpoint });
    expect(await collect(root.list(''))).toEqual([{ key: 'x/y', size: 2 }]);
    await emptyPrefix(store);
  });

  const cliMissing = existsSync(AWS_CLI) ? undefined : `${AWS_CLI} missing`;
  it.skipIf(skipOutsideCi(cliMissing))(skipTitle('writes objects the AWS CLI reads back identically', cliMissing), async () => {
    const store = makeStore();
    const body = randomBytes(3 * MiB + 17);
    await store.put('cli/object', body);
    const key = store.location.slice(`s3://${BUCKET}/`.length) + 'cli/object';
    const env: NodeJS.ProcessEnv = { ...process.env, ...s3ServerEnv(server) };
    // awscli honours AWS_CA_BUNDLE, which has nothing to verify on plain http.
    delete env['AWS_CA_BUNDLE'];
    const run = promisify(execFile);
    const head = await run(AWS_CLI, ['--endpoint-url', server.endpoint, 's3api', 'head-object', '--bucket', BUCKET, '--key', key], { env });
    expect((JSON.parse(head.stdout) as { ContentLength: number }).ContentLength).toBe(body.length);
    const copy = await run(AWS_CLI, ['--endpoint-url', server.endpoint, 's3', 'cp', `s3://${BUCKET}/${key}`, '-'], {
      env,
      encoding: 'buffer',
      maxBuffer: 64 * MiB,
    });
    expect(copy.stdout.equals(body)).toBe(true);
    await emptyPrefix(store);
  });
});

describe('S3Store per-attempt timeouts over HTTP (fault proxy, manual clock)', () => {
  it('a whole-object GET: a stalled header times out at the base budget; a large body gets the budget of its Content-Length from the headers on', async () => {
    const direct = makeStore();
    const proxy = await startFaultProxy({ target: server.endpoint, seed: 0 });
    const clock = new ManualClock();
    const prefix = direct.location.slice(`s3://${BUCKET}/`.length);
    const store = new TimeoutStore(new S3Store({ bucket: BUCKET, prefix, endpoint: proxy.endpoint }), { baseMs: 1000, minBytesPerSecond: MiB, timer: clock });
    try {
      await direct.put('small', new Uint8Array([1]));
      proxy.injectNext('stall', (method) => method === 'GET');
      const stalled = store.get('small');
      await proxy.firstStall();
      expect(clock.delays).toEqual([1000]);
      await clock.advance(1000);
      const error = await expectStoreError(stalled, 'retryable');
      expect(error.message).toMatch(/^GET small in s3:\/\/.*: no answer within 1\.0 s \(the per-attempt timeout\)$/);

      // Larger than any fixed budget would allow at 1 MiB/s (it was 32 MiB for every whole GET).
      const body = randomBytes(40 * MiB);
      await direct.put('large', body);
      const held = proxy.holdNext((method) => method === 'GET');
      const pending = store.get('large');
      const state = outcome(pending);
      await held.sent;
      await waitUntil(() => clock.delays.length === 3, 'the response headers to reach the store');
      expect(clock.delays.slice(1)).toEqual([1000, 1000 + 40_000]);
      await clock.advance(40_999);
      await turns();
      expect(state()).toBeUndefined();
      held.release();
      expect(Buffer.from(await pending).equals(body)).toBe(true);
      expect(clock.waiting).toBe(0);
    } finally {
      await proxy.close();
      await emptyPrefix(direct);
    }
  });
});

describe('startS3Server', () => {
  it("fails with the child's stderr when s3rver cannot start", async () => {
    const notADirectory = fileURLToPath(import.meta.url);
    await expect(startS3Server({ directory: notADirectory })).rejects.toThrow(/s3rver exited before listening.*stderr:.*(EEXIST|ENOTDIR)/s);
  });
});

describe('S3Store response checks (fake client)', () => {
  // Real S3 answers a range ending past the object with the bytes that exist (s3rver says 416),
  // and a dropped connection can cut a body short: both must be caught here.
  const storeAnswering = (output: { body: Uint8Array; ContentRange?: string; ContentLength?: number }): S3Store => {
    const client = {
      send: async () => ({ ...output, Body: { transformToByteArray: async () => output.body } }),
    } as unknown as S3Client;
    return new S3Store({ bucket: 'b', prefix: 'p', client });
  };

  it('treats a short ranged body past the object end as permanent', async () => {
    const store = storeAnswering({ body: new Uint8Array(5), ContentRange: 'bytes 990-994/995', ContentLength: 5 });
    const error = await expectStoreError(store.get('k', { range: { offset: 990, length: 20 } }), 'permanent');
    expect(error.message).toMatch(/past the end of k \(995 bytes\)/);
  });

  it('treats a short ranged body inside the object as a retryable truncation', async () => {
    const store = storeAnswering({ body: new Uint8Array(5), ContentRange: 'bytes 0-19/1000', ContentLength: 20 });
    const error = await expectStoreError(store.get('k', { range: { offset: 0, length: 20 } }), 'retryable');
    expect(error.message).toMatch(/truncated/);
  });

  it('treats a whole body shorter than Content-Length as a retryable truncation', async () => {
    const store = storeAnswering({ body: new Uint8Array(5), ContentLength: 8 });
    await expectStoreError(store.get('k'), 'retryable');
  });
});

describe('classifyS3Error', () => {
  const sdkError = (name: string, status?: number): unknown =>
    Object.assign(new Error(`${name} happened`), { name, ...(status !== undefined ? { $metadata: { httpStatusCode: status } } : {}) });
  const errno = (code: string): unknown => Object.assign(new Error(`connect ${code}`), { code });

  it('names the HTTP status when a refusal has no error body (a HEAD: the SDK says Unknown)', () => {
    const mapped = classifyS3Error(Object.assign(new Error('UnknownError'), { name: 'Unknown', $metadata: { httpStatusCode: 403 } }), 'config', { bucket: 'b' });
    expect(mapped.kind).toBe('auth');
    expect(mapped.message).toMatch(/^access to config in bucket b denied \(HTTP 403\): /);
  });

  it("leaves out the SDK's 'UnknownError' placeholder for an empty error message (Ceph RGW sends those)", () => {
    const empty = (name: string, status: number): unknown => Object.assign(new Error('UnknownError'), { name, $metadata: { httpStatusCode: status } });
    expect(classifyS3Error(empty('InvalidObjectName', 400), 'k').message).toBe('k: InvalidObjectName (HTTP 400)');
    expect(classifyS3Error(empty('ServiceUnavailable', 503), 'k').message).toBe('k: ServiceUnavailable (503)');
  });

  it.each([
    [sdkError('NoSuchKey', 404), 'not-found'],
    [sdkError('NotFound', 404), 'not-found'],
    [sdkError('NoSuchBucket', 404), 'no-bucket'],
    [sdkError('AccessDenied', 403), 'auth'],
    [sdkError('InvalidAccessKeyId', 403), 'auth'],
    [sdkError('SignatureDoesNotMatch', 403), 'auth'],
    [sdkError('ExpiredToken', 400), 'auth'],
    [sdkError('CredentialsProviderError'), 'auth'],
    [sdkError('PreconditionFailed', 412), 'exists'],
    [sdkError('SlowDown', 503), 'retryable'],
    [sdkError('ThrottlingException', 400), 'retryable'],
    [sdkError('TooManyRequests', 429), 'retryable'],
    [sdkError('InternalError', 500), 'retryable'],
    [sdkError('RequestTimeout', 400), 'retryable'],
    [sdkError('TimeoutError'), 'retryable'],
    [errno('ECONNRESET'), 'retryable'],
    [errno('EPIPE'), 'retryable'],
    [errno('ETIMEDOUT'), 'retryable'],
    [new Error('socket hang up'), 'retryable'],
    [errno('ECONNREFUSED'), 'unreachable'],
    [errno('ENOTFOUND'), 'unreachable'],
    [errno('EAI_AGAIN'), 'unreachable'],
    [Object.assign(new AggregateError([errno('ECONNREFUSED')]), {}), 'unreachable'],
    [sdkError('InvalidArgument', 400), 'permanent'],
    [new Error('something odd'), 'permanent'],
  ] as const)('%s → %s', (error, kind) => {
    const mapped = classifyS3Error(error, 'some/key', { bucket: 'b', endpoint: 'http://h:1' });
    expect(mapped).toBeInstanceOf(StoreError);
    expect(mapped.kind).toBe(kind);
    expect(mapped.key).toBe('some/key');
    expect(mapped.message).not.toContain('\n');
  });
});
