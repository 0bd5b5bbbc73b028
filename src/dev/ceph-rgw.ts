// A throwaway Ceph RADOS Gateway (a real S3 server) on 127.0.0.1, for tests and local experiments.
//
// Debian 12 ships Ceph 16.2, whose radosgw has no standalone backend, so this starts a one-node
// cluster from the Debian packages ceph-mon, ceph-osd and radosgw: one monitor, one OSD keeping
// bluestore in a sparse file, no manager, pool size 1, no cephx; then radosgw (beast frontend)
// and an S3 user made by radosgw-admin. Everything lives in one temporary directory.
//
// Measured on a 2-core VM: ready in about 15 s idle and 22-25 s under a loaded test run (most of
// it radosgw creating its pools), about 150 MB resident for the three daemons, and a 2 GiB sparse
// block file of which about 45 MB is written. Runs as root or as any other user.
//
// What RGW 16.2 does that s3rver does not: it checks V4 signatures, refuses a PutObject with
// If-None-Match: * on an existing key (412) but ignores the header on CompleteMultipartUpload,
// lists in byte order, and answers errors with an empty <Message>.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { randomBytes, randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { missingPrograms } from './programs.js';

export interface CephRgw {
  /** e.g. http://127.0.0.1:41234 */
  endpoint: string;
  port: number;
  accessKeyId: string;
  secretAccessKey: string;
  /** The cluster's configuration, data and logs (removed on stop()). */
  directory: string;
  stop(): Promise<void>;
}

export interface CephRgwOptions {
  /** Buckets created at startup (S3 names: at least 3 characters). */
  buckets?: string[];
}

/** The programs startCephRgw runs (packages ceph-mon, ceph-osd, radosgw and their dependencies). */
export const CEPH_RGW_PROGRAMS = ['monmaptool', 'ceph-mon', 'ceph', 'ceph-osd', 'radosgw', 'radosgw-admin'] as const;

const START_TIMEOUT_MS = 180_000;
const POLL_MS = 200;
const BLOCK_FILE_BYTES = 2 * 1024 * 1024 * 1024;

// Runs beside the cluster and is told every process id started. When its stdin closes (stop(), or
// this process dying, even by SIGKILL) it kills them all and removes the directory. It ignores
// SIGINT and SIGTERM, which a terminal sends to the whole process group, so that cleanup still runs.
const WATCHDOG = `
const pids = []; let pending = '';
process.on('SIGINT', () => {}); process.on('SIGTERM', () => {});
process.stdin.setEncoding('utf8').on('data', (chunk) => {
  pending += chunk;
  for (let i; (i = pending.indexOf('\\n')) >= 0; pending = pending.slice(i + 1)) pids.push(Number(pending.slice(0, i)));
}).on('end', () => {
  for (const pid of pids) { try { process.kill(pid, 'SIGKILL'); } catch {} }
  require('fs').rmSync(process.argv[1], { recursive: true, force: true, maxRetries: 5 });
  process.exit(0);
}).resume();`;

/** Which of CEPH_RGW_PROGRAMS are not on $PATH. */
export function missingCephPrograms(): string[] {
  return missingPrograms(CEPH_RGW_PROGRAMS);
}

export async function startCephRgw(options: CephRgwOptions = {}): Promise<CephRgw> {
  const missing = missingCephPrograms();
  if (missing.length > 0) {
    throw new Error(`Ceph RGW needs ${missing.join(', ')} on PATH: install the Debian packages ceph-mon, ceph-osd and radosgw`);
  }
  const directory = await mkdtemp(join(tmpdir(), 'ceph-rgw-'));
  const watchdog = spawn(process.execPath, ['-e', WATCHDOG, directory], { stdio: ['pipe', 'ignore', 'inherit'] });
  // Should the watchdog die first, a write to it must not crash this process; stop() still works.
  watchdog.stdin!.on('error', () => undefined);
  const daemons: ChildProcess[] = [];
  const track = (child: ChildProcess): void => {
    if (child.pid !== undefined) watchdog.stdin!.write(`${child.pid}\n`);
  };
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      const exited = new Promise<void>((resolve) => {
        if (watchdog.exitCode !== null || watchdog.signalCode !== null) resolve();
        else watchdog.once('exit', () => resolve());
      });
      watchdog.stdin!.end();
      await exited;
      await Promise.all(daemons.map(waitForExit));
    })());

  try {
    const [monPort, rgwPort] = await freePorts(2);
    const conf = join(directory, 'ceph.conf');
    const fsid = randomUUID();
    for (const sub of ['mon', 'osd/0', 'run', 'log']) await mkdir(join(directory, sub), { recursive: true });
    await writeFile(conf, cephConf(directory, fsid, monPort!, rgwPort!));
    const c = ['-c', conf];

    let failure: string | undefined;
    const run = (program: string, args: string[]): Promise<string> => runProgram(program, args, track);
    const daemon = (name: string, program: string, args: string[]): void => {
      const child = spawn(program, [...c, ...args, '-f'], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr!.setEncoding('utf8').on('data', (chunk: string) => {
        stderr = (stderr + chunk).slice(-2000);
      });
      child.on('error', () => undefined);
      track(child);
      daemons.push(child);
      child.once('exit', (code, signal) => {
        if (stopped === undefined) failure ??= `${name} exited (code ${code}, signal ${signal}); stderr: ${stderr.trim() || '(empty)'}`;
      });
    };

    await run('monmaptool', ['--create', '--addv', 'a', `[v2:127.0.0.1:${monPort}]`, '--fsid', fsid, join(directory, 'monmap')]);
    await run('ceph-mon', [...c, '--mkfs', '-i', 'a', '--monmap', join(directory, 'monmap')]);
    daemon('ceph-mon', 'ceph-mon', ['-i', 'a']);
    const osdUuid = randomUUID();
    // Registers OSD 0 in the cluster map (waits for the monitor to answer).
    await run('ceph', [...c, '--connect-timeout', '60', 'osd', 'new', osdUuid]);
    await run('ceph-osd', [...c, '-i', '0', '--mkfs', '--osd-uuid', osdUuid]);
    daemon('ceph-osd', 'ceph-osd', ['-i', '0']);
    daemon('radosgw', 'radosgw', ['-n', 'client.rgw']);

    const endpoint = `http://127.0.0.1:${rgwPort}`;
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      if (failure !== undefined) throw new Error(`Ceph RGW did not start: ${failure}`);
      if (await answers(endpoint)) break;
      if (Date.now() > deadline) throw new Error(`Ceph RGW did not answer at ${endpoint} within ${START_TIMEOUT_MS / 1000} s`);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    }

    const accessKeyId = randomBytes(10).toString('hex').toUpperCase();
    const secretAccessKey = randomBytes(20).toString('base64url');
    await run('radosgw-admin', [...c, 'user', 'create', '--uid', 'cdp-test', '--display-name', 'cdp-s3 tests', '--access-key', accessKeyId, '--secret-key', secretAccessKey]);

    const client = new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId, secretAccessKey } });
    try {
      for (const bucket of options.buckets ?? []) await client.send(new CreateBucketCommand({ Bucket: bucket }));
    } finally {
      client.destroy();
    }
    return { endpoint, port: rgwPort!, accessKeyId, secretAccessKey, directory, stop };
  } catch (error) {
    const logs = await readFile(join(directory, 'log', 'client.rgw.log'), 'utf8').catch(() => '');
    await stop();
    if (logs === '') throw error;
    throw new Error(`${(error as Error).message}; radosgw log tail: ${logs.slice(-1500)}`, { cause: error });
  }
}

/** Environment for SDK clients and the AWS CLI talking to `rgw` (AWS_CA_BUNDLE must be unset). */
export function cephRgwEnv(rgw: Pick<CephRgw, 'endpoint' | 'accessKeyId' | 'secretAccessKey'>): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: rgw.accessKeyId,
    AWS_SECRET_ACCESS_KEY: rgw.secretAccessKey,
    AWS_REGION: 'us-east-1',
    AWS_ENDPOINT_URL: rgw.endpoint,
  };
}

function cephConf(directory: string, fsid: string, monPort: number, rgwPort: number): string {
  return `[global]
fsid = ${fsid}
mon host = v2:127.0.0.1:${monPort}
public addr = 127.0.0.1
# No cephx: nothing here is reachable from off the machine.
auth cluster required = none
auth service required = none
auth client required = none
# Without this radosgw retries forever with "get_initial_auth_request returned -13".
ms mon client mode = crc
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
run dir = ${directory}/run
admin socket = ${directory}/run/$name.asok
pid file = ${directory}/run/$name.pid
log file = ${directory}/log/$name.log
mon data = ${directory}/mon/$id
osd data = ${directory}/osd/$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = ${BLOCK_FILE_BYTES}
bluestore fsck on mkfs = false
bluestore cache autotune = false
bluestore cache size = 67108864

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:${rgwPort}
rgw data = ${directory}/rgw
`;
}

/** Runs a short-lived program to completion; its stdout, or an error with its stderr. */
function runProgram(program: string, args: string[], track: (child: ChildProcess) => void): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    track(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr = (stderr + chunk).slice(-2000)));
    const timer = setTimeout(() => child.kill('SIGKILL'), START_TIMEOUT_MS);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`${program} could not be run: ${error.message}`));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve(stdout);
      else reject(new Error(`${program} ${args.join(' ')} failed (code ${code}, signal ${signal}): ${stderr.trim() || '(no stderr)'}`));
    });
  });
}

async function answers(endpoint: string): Promise<boolean> {
  try {
    const response = await fetch(endpoint, { signal: AbortSignal.timeout(5_000) });
    await response.arrayBuffer();
    return response.ok;
  } catch {
    return false;
  }
}

/** Ports that were free on 127.0.0.1 a moment ago (held together, so they are distinct). */
async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, async () => {
      const server = createServer();
      await new Promise<void>((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
      return server;
    }),
  );
  const ports = servers.map((server) => {
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('no TCP port');
    return address.port;
  });
  await Promise.all(servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
  return ports;
}

function waitForExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}
