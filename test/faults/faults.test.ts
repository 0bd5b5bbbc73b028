// Faults as tests: the real commands against a real S3 server (s3rver) behind a fault-injecting
// proxy (test/helpers/fault-proxy.ts): 503 SlowDown, resets before, after and in the middle of
// a response, latency spikes, stalls that never answer, and an outage switched on and off.
// Every result must be bit-exact, nothing lost, and nothing may hang: a stalled request ends by
// its per-attempt timeout (an event the proxy observes), not by anything this file waits for.

import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { requestTimeoutOptions } from '../../src/cli/context.js';
import { protect } from '../../src/core/protect.js';
import { StoreError } from '../../src/errors.js';
import { openStore } from '../../src/store/open.js';
import { cli, cliStore } from '../helpers/cli.js';
import { FAULT_KINDS, type FaultProxy, startFaultProxy } from '../helpers/fault-proxy.js';
import { makeImage, mutateImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const run = promisify(execFile);
const REGION = 64 * 1024;
const SIZE = 4 * 1024 * 1024;
const BUCKET = 'faults';
/** 10% of requests fail or stall; latency spikes come on top. */
const TEN_PERCENT = { slowdown: 0.025, 'reset-before': 0.02, 'reset-after': 0.025, 'reset-mid': 0.02, stall: 0.01, latency: 0.02 };
/** Small, so a stalled attempt is given up on soon; real requests here take milliseconds. */
const REQUEST_TIMEOUT = '1500ms';
/** The same for stores the test opens itself. */
const TEST_TIMEOUT = requestTimeoutOptions(1500);
const fixture = useS3Fixture('faults', [BUCKET]);
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
let proxy: FaultProxy;
let counter = 0;

beforeAll(async () => {
  proxy = await startFaultProxy({ target: fixture.server.endpoint, seed: 9, emulateIfNoneMatch: true, latencyMs: 100 });
});
afterAll(async () => {
  await proxy?.close();
});

/** The command line through the proxy, with each retry printed (--debug). */
function viaProxy(...args: string[]) {
  return cli('--endpoint', proxy.endpoint, '--request-timeout', REQUEST_TIMEOUT, '--debug', ...args);
}

async function workspace() {
  const n = ++counter;
  const work = join(fixture.dir, `w-${n}`);
  await mkdir(work, { recursive: true });
  return { work, repo: `s3://${BUCKET}/r-${n}`, source: join(work, 'disk.img') };
}

describe('the fault proxy and the store stack', () => {
  it('each fault kind, forced once, is survived; a stall is ended by the per-attempt timeout, which closes the connection', async () => {
    proxy.setProbabilities({});
    const retries: string[] = [];
    const store = openStore(`s3://${BUCKET}/kinds`, {
      endpoint: proxy.endpoint,
      timeout: TEST_TIMEOUT,
      retry: { baseDelayMs: 1, maxDelayMs: 10, onRetry: (info) => retries.push(`${info.operation} ${info.error.message}`) },
    });
    const body = new Uint8Array(100_000).map((_, i) => i * 7);
    await store.put('object', body);
    for (const kind of FAULT_KINDS) {
      // A whole object, a range, and a range read into the caller's buffer (as restore does).
      for (const [range, into] of [[undefined], [{ offset: 1000, length: 50_000 }], [{ offset: 3, length: 60_000 }, new Uint8Array(70_000)]] as const) {
        const before = proxy.counts[kind];
        const closed = proxy.counts.stallsClosedByClient;
        const retried = retries.length;
        proxy.injectNext(kind, (method) => method === 'GET');
        const expected = range === undefined ? body : body.subarray(range.offset, range.offset + range.length);
        expect(sha(await store.get('object', range === undefined ? {} : { range, ...(into === undefined ? {} : { into }) })), kind).toBe(sha(expected));
        expect(proxy.counts[kind], kind).toBe(before + 1);
        if (kind === 'stall') {
          await proxy.stalledConnectionsClosed();
          expect(proxy.counts.stallsClosedByClient).toBe(closed + 1);
          const timedOut = /^get GET object in s3:\/\/faults\/kinds: no answer within \d+\.\d s \(the per-attempt timeout/;
          expect(retries.slice(retried).filter((r) => timedOut.test(r)), retries.join('\n')).toHaveLength(1);
        }
      }
    }
    // Every kind but the latency spike failed one attempt, which was retried (a busy machine may add a timeout).
    expect(retries.length, retries.join('\n')).toBeGreaterThanOrEqual(3 * (FAULT_KINDS.length - 1));
    proxy.injectNext('stall', (method) => method === 'PUT');
    await store.put('stalled-put', body);
    expect(sha(await store.get('stalled-put'))).toBe(sha(body));
  });

  it('an outage fails calls as retries exhausted, saying so; once it is off they work again', async () => {
    proxy.setProbabilities({});
    const store = openStore(`s3://${BUCKET}/outage`, { endpoint: proxy.endpoint, retry: { attempts: 3, baseDelayMs: 1, maxDelayMs: 5 } });
    proxy.setOutage(true);
    const before = proxy.counts.outage;
    const error = await store.put('k', new Uint8Array([1])).catch((e: unknown) => e);
    proxy.setOutage(false);
    expect(error).toBeInstanceOf(StoreError);
    expect((error as StoreError).kind).toBe('retryable');
    expect((error as StoreError).message).toMatch(/\(gave up after 3 attempts\)$/);
    expect(proxy.counts.outage - before).toBe(3);
    await store.put('k', new Uint8Array([1]));
    expect(Array.from(await store.get('k'))).toEqual([1]);
  });

  it('503 SlowDown on every attempt: the final error says it was throttled and that it gave up', async () => {
    const store = openStore(`s3://${BUCKET}/throttled`, { endpoint: proxy.endpoint, retry: { attempts: 4, baseDelayMs: 1, maxDelayMs: 5 } });
    const before = proxy.counts.slowdown;
    proxy.setProbabilities({ slowdown: 1 });
    const error = await store.get('anything').catch((e: unknown) => e);
    proxy.setProbabilities({});
    expect(proxy.counts.slowdown - before).toBe(4);
    expect((error as StoreError).kind).toBe('retryable');
    expect((error as StoreError).message).toMatch(/^anything in bucket faults: SlowDown \(503\): Please reduce your request rate\. \(gave up after 4 attempts\)$/);
  });

  it('the proxy emulates If-None-Match (s3rver ignores it): another writer\'s object stays "exists"', async () => {
    proxy.setProbabilities({});
    const store = openStore(`s3://${BUCKET}/inm`, { endpoint: proxy.endpoint, retry: { baseDelayMs: 1, maxDelayMs: 5 } });
    await store.put('marks/1', new Uint8Array([1, 2]), { ifAbsent: true });
    const error = await store.put('marks/1', new Uint8Array([3, 4]), { ifAbsent: true }).catch((e: unknown) => e);
    expect((error as StoreError).kind).toBe('exists');
    expect(Array.from(await store.get('marks/1'))).toEqual([1, 2]);
  });
});

describe('a lost reply to a committed conditional PUT', () => {
  it('the retry gets 412, reads the delta back, finds it is its own: the backup succeeds (exit 0, not 6)', async () => {
    proxy.setProbabilities({});
    const w = await workspace();
    const image = makeImage({ size: SIZE, regionSize: REGION, seed: 1 });
    await writeFile(w.source, image);
    expect((await viaProxy('--repo', w.repo, 'init', '--from', w.source, '--region-size', '64KiB')).code).toBe(0);
    const failed = proxy.counts.preconditionFailed;
    const lost = proxy.counts['reset-after'];
    proxy.injectNext('reset-after', (method, path) => method === 'PUT' && /\/deltas\//.test(path));
    const backup = await viaProxy('--repo', w.repo, '--json', 'backup', w.source);
    expect(backup.code, backup.stderr).toBe(0);
    expect(proxy.counts['reset-after']).toBe(lost + 1);
    expect(proxy.counts.preconditionFailed).toBe(failed + 1); // the retry really met the 412
    expect(backup.stderr).toMatch(/put deltas\/\S+ attempt 1 failed, retrying in \d+ ms/);
    const restored = await viaProxy('--repo', w.repo, 'restore', '--at', 'latest', '--to', '-');
    expect(restored.code, restored.stderr).toBe(0);
    expect(sha(restored.stdoutBytes)).toBe(sha(image));
  });
});

describe('a lost reply to a committed conditional PUT, at the store', () => {
  it('the retry gets 412 and compares over HTTP: a HEAD, then a GET of exactly the stored size (ours); another size is not downloaded', async () => {
    proxy.setProbabilities({});
    const store = openStore(`s3://${BUCKET}/readback`, { endpoint: proxy.endpoint, timeout: TEST_TIMEOUT, retry: { baseDelayMs: 1, maxDelayMs: 5 } });
    const body = new Uint8Array(70_000).map((_, i) => i * 13);
    const conditionalPut = (key: string) => (method: string, url: string, headers: Record<string, unknown>) =>
      method === 'PUT' && url.split('?')[0]!.endsWith(`/${key}`) && headers['if-none-match'] === '*';
    const since = (from: number) => proxy.requests.slice(from).map((r) => `${r.method} ${r.url.split('?')[0]!.replace(/^.*\/readback\//, '')}${r.range === undefined ? '' : ` ${r.range}`}`);

    // Ours: the first reply is lost after s3rver stored it.
    let from = proxy.requests.length;
    proxy.injectNext('reset-after', conditionalPut('marks/ours'));
    await store.put('marks/ours', body, { ifAbsent: true });
    expect(since(from)).toEqual(['PUT marks/ours', 'PUT marks/ours', 'HEAD marks/ours', `GET marks/ours bytes=0-${body.length - 1}`]);

    // Another writer's, of another size: the first attempt never reached the server.
    await store.put('marks/theirs', new Uint8Array(10).fill(1), { ifAbsent: true });
    from = proxy.requests.length;
    proxy.injectNext('reset-before', conditionalPut('marks/theirs'));
    const error = await store.put('marks/theirs', body, { ifAbsent: true }).catch((e: unknown) => e);
    expect((error as StoreError).kind).toBe('exists');
    expect(since(from)).toEqual(['PUT marks/theirs', 'PUT marks/theirs', 'HEAD marks/theirs']);
    expect(Array.from(await store.get('marks/theirs'))).toEqual(Array.from(new Uint8Array(10).fill(1)));
  });
});

describe('the commands at 10% faults', () => {
  it('backup (base and incrementals), restore (file and --to -), scan and verify --read-data: bit-exact, nothing lost', async () => {
    const w = await workspace();
    const image = makeImage({ size: SIZE, regionSize: REGION, seed: 2 });
    await writeFile(w.source, image);
    proxy.setProbabilities(TEN_PERCENT);
    const injectedBefore = proxy.injected();
    let stderr = '';
    const ok = async (expectedCode: number, ...args: string[]) => {
      const result = await viaProxy('--repo', w.repo, ...args);
      stderr += result.stderr;
      expect(result.code, `${args.join(' ')}: ${result.stderr}`).toBe(expectedCode);
      return result;
    };
    try {
      await ok(0, 'init', '--from', w.source, '--region-size', '64KiB');
      const digests: string[] = [];
      for (let round = 0; round < 3; round++) {
        if (round > 0) {
          mutateImage(image, 6, 200 + round);
          await writeFile(w.source, image);
        }
        const report = JSON.parse((await ok(0, '--json', 'backup', w.source)).stdout) as { seq: number };
        expect(report.seq).toBe(round + 1);
        digests.push(sha(image));
      }
      for (const [index, digest] of digests.entries()) {
        const target = join(w.work, `restored-${index + 1}.img`);
        await ok(0, 'restore', '--at', String(index + 1), '--to', target);
        expect(sha(await readFile(target)), `point in time ${index + 1}`).toBe(digest);
      }
      expect(sha((await ok(0, 'restore', '--at', 'latest', '--to', '-')).stdoutBytes)).toBe(digests.at(-1));

      // Behind cdp-s3's back: the scan finds and repairs it; a second scan finds nothing.
      mutateImage(image, 3, 300);
      await writeFile(w.source, image);
      const scanned = JSON.parse((await ok(10, '--json', 'scan', w.source)).stdout) as { discrepancies: number; repaired: number };
      expect(scanned.discrepancies).toBeGreaterThan(0);
      await ok(0, 'scan', w.source);
      expect(sha((await ok(0, 'restore', '--at', 'latest', '--to', '-')).stdoutBytes)).toBe(sha(image));
      await ok(0, 'verify', '--read-data');
      const timeline = JSON.parse((await ok(0, '--json', 'log')).stdout) as Array<{ type: string }>;
      expect(timeline.filter((t) => t.type === 'delta')).toHaveLength(4); // 3 backups and the fix-up
    } finally {
      proxy.setProbabilities({});
    }
    // The faults really happened, and --debug showed the retries they caused.
    expect(proxy.injected() - injectedBefore).toBeGreaterThan(5);
    expect(stderr).toMatch(/attempt \d+ failed, retrying in \d+ ms/);
  });
});

describe('protect at 10% faults', () => {
  it('writes through NBD (qemu-io) ship as points in time through faults and an outage; restore is bit-exact', async (ctx) => {
    const clients = await run('which', ['qemu-io']).then(
      () => true,
      () => false,
    );
    if (!clients) return ctx.skip('qemu-io missing (apt-get install qemu-utils)');
    const w = await workspace();
    await writeFile(w.source, makeImage({ size: SIZE, regionSize: REGION, seed: 3 }));
    expect((await viaProxy('--repo', w.repo, 'init', '--from', w.source, '--region-size', '64KiB')).code).toBe(0);
    // Encrypted (the tests' CDP_S3_PASSWORD): protect gets the store its password unlocks, as the CLI's.
    const store = await cliStore(w.repo, { endpoint: proxy.endpoint, timeout: TEST_TIMEOUT, retry: { baseDelayMs: 5, maxDelayMs: 50 } });
    expect((await viaProxy('--repo', w.repo, 'backup', w.source)).code).toBe(0);
    proxy.setProbabilities(TEN_PERCENT);
    const injectedBefore = proxy.injected();
    // Shipments are driven by the test (sealAndShip), not by the interval.
    const handle = await protect({ store, source: w.source, drl: join(w.work, 'disk.drl'), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 3_600_000 });
    const url = `nbd://127.0.0.1:${handle.port}`;
    const qemuIo = (...commands: string[]) => run('qemu-io', ['-f', 'raw', '-t', 'none', ...commands.flatMap((c) => ['-c', c]), url]);
    let stopped = false;
    try {
      await qemuIo('write -P 0x11 0 256k', 'write -P 0x22 1M 64k', 'flush');
      await handle.volume.sealAndShip();
      await qemuIo('write -P 0x33 2M 128k', 'flush');
      await handle.volume.sealAndShip();
      // An outage: the interval goes to the spool; when the store is back, it ships in order.
      proxy.setOutage(true);
      await qemuIo('write -P 0x44 3M 64k', 'write -z 3200k 64k', 'flush');
      // The first seal's shipment fails and starts the outage; the next seal goes to the spool.
      await handle.volume.sealAndShip().catch(() => undefined);
      await qemuIo('write -P 0x46 3100k 4k', 'flush');
      await handle.volume.sealAndShip().catch(() => undefined);
      expect(handle.volume.status().spooledPoints).toBeGreaterThan(0);
      proxy.setOutage(false);
      await qemuIo('write -P 0x55 100k 8k', 'flush');
      await handle.volume.sealAndShip();
      stopped = true;
      const final = await handle.stop();
      expect(final).toMatchObject({ spooledPoints: 0, unshippedRegions: 0, drlRegions: 0 });
    } finally {
      if (!stopped) await handle.stop().catch(() => undefined);
      proxy.setProbabilities({});
    }
    expect(proxy.injected() - injectedBefore).toBeGreaterThan(0);
    const restored = await viaProxy('--repo', w.repo, 'restore', '--at', 'latest', '--to', '-');
    expect(restored.code, restored.stderr).toBe(0);
    expect(sha(restored.stdoutBytes)).toBe(sha(await readFile(w.source)));
    const verified = await viaProxy('--repo', w.repo, 'verify', '--read-data');
    expect(verified.code, verified.stderr).toBe(0);
  });
});

describe('--request-timeout', () => {
  it('refuses a value that is not a duration, in one line, exit code 2', async () => {
    const result = await cli('--repo', join(fixture.dir, 'nowhere'), '--request-timeout', 'forever', 'log');
    expect(result.code).toBe(2);
    expect(result.stderr.trim().split('\n')).toEqual([expect.stringMatching(/--request-timeout "forever" is not a duration: use e\.g\. 500ms, 5s/)]);
  });
});
