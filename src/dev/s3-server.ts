// A throwaway S3-compatible server (s3rver 3.7.1) for tests and local experiments.
//
// It runs as a child process because (1) listings longer than 1000 keys need
// `--openssl-legacy-provider` (s3rver signs continuation tokens with DES) and (2) s3rver is
// CPU-bound, so in its own process it uses another core instead of the test's.
//
// s3rver accepts only the access key S3RVER and does not check V4 signatures. Clients find it
// through the SDK's default chain: set the variables from s3ServerEnv(server) in process.env.

import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';

export interface S3Server {
  /** e.g. http://127.0.0.1:41234 (https with `tls`) */
  endpoint: string;
  port: number;
  /** Where s3rver keeps buckets and objects. */
  directory: string;
  stop(): Promise<void>;
}

export interface S3ServerOptions {
  /** Kept on stop(); default a fresh temporary directory, removed on stop(). */
  directory?: string;
  /** Buckets created at startup. */
  buckets?: string[];
  /**
   * Serve https with this key and certificate (PEM files), e.g. for restic, whose signed
   * uploads s3rver stores right only over TLS. Clients must trust the certificate
   * (NODE_EXTRA_CA_CERTS, AWS_CA_BUNDLE, restic --cacert).
   */
  tls?: { key: string; cert: string };
}

const START_TIMEOUT_MS = 20_000;
const KILL_GRACE_MS = 2_000;

// Exits the child when its stdin closes, i.e. when this process dies, even by SIGKILL.
const WATCHDOG = 'data:text/javascript,process.stdin.on("end",()=>process.exit(0)).resume()';

export async function startS3Server(options: S3ServerOptions = {}): Promise<S3Server> {
  const directory = options.directory ?? (await mkdtemp(join(tmpdir(), 's3rver-')));
  const ownsDirectory = options.directory === undefined;
  const require = createRequire(import.meta.url);
  const packageJson = require.resolve('s3rver/package.json');
  const { bin } = require('s3rver/package.json') as { bin: Record<string, string> };
  const cli = join(dirname(packageJson), bin['s3rver'] ?? 'bin/s3rver.js');

  const args = ['--openssl-legacy-provider', '--import', WATCHDOG, cli];
  args.push('--directory', directory, '--address', '127.0.0.1', '--port', '0', '--silent');
  if (options.tls !== undefined) args.push('--key', options.tls.key, '--cert', options.tls.cert);
  for (const bucket of options.buckets ?? []) args.push('--configure-bucket', bucket);

  // AWS_CA_BUNDLE (set on some machines) is for TLS clients; it has no business in a plain-http server.
  const env = { ...process.env };
  delete env['AWS_CA_BUNDLE'];
  const child = spawn(process.execPath, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
  const killOnExit = (): void => {
    child.kill('SIGKILL');
  };
  process.on('exit', killOnExit);

  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    stderr = (stderr + chunk).slice(-4000);
  });

  let port: number;
  try {
    // The CLI prints the bound address, including the real port when asked for port 0.
    port = await new Promise<number>((resolvePort, reject) => {
      let stdout = '';
      const timer = setTimeout(() => fail(`did not start within ${START_TIMEOUT_MS / 1000} s`), START_TIMEOUT_MS);
      const fail = (why: string): void => {
        clearTimeout(timer);
        reject(new Error(`s3rver ${why}; stderr: ${stderr.trim() || '(empty)'}`));
      };
      child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
        stdout += chunk;
        const match = /listening on [^\s:]+:(\d+)/.exec(stdout);
        if (match?.[1] !== undefined) {
          clearTimeout(timer);
          resolvePort(Number(match[1]));
        }
      });
      child.once('error', (error) => fail(`could not be spawned: ${error.message}`));
      child.once('exit', (code, signal) => fail(`exited before listening (code ${code}, signal ${signal})`));
    });
  } catch (error) {
    process.off('exit', killOnExit);
    child.kill('SIGKILL');
    if (ownsDirectory) await rm(directory, { recursive: true, force: true });
    throw error;
  }

  let stopped: Promise<void> | undefined;
  return {
    endpoint: `${options.tls === undefined ? 'http' : 'https'}://127.0.0.1:${port}`,
    port,
    directory,
    stop: () =>
      (stopped ??= (async () => {
        await terminate(child);
        process.off('exit', killOnExit);
        if (ownsDirectory) await rm(directory, { recursive: true, force: true });
      })()),
  };
}

/** Environment for SDK clients and the AWS CLI talking to `server` (AWS_CA_BUNDLE must be unset). */
export function s3ServerEnv(server: Pick<S3Server, 'endpoint'>): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: 'S3RVER',
    AWS_SECRET_ACCESS_KEY: 'S3RVER',
    AWS_REGION: 'us-east-1',
    AWS_ENDPOINT_URL: server.endpoint,
  };
}

async function terminate(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolveExit) => child.once('exit', () => resolveExit()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), KILL_GRACE_MS);
  await exited;
  clearTimeout(timer);
}
