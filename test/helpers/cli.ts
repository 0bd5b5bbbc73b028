// Runs the cdp-s3 command line in-process with captured output, or as a real child process.

import { spawn } from 'node:child_process';
import { Writable } from 'node:stream';
import { run } from '../../src/cli/program.js';
import { unlockStore } from '../../src/repo/unlock.js';
import { type OpenStoreOptions, openStore } from '../../src/store/open.js';
import type { ObjectStore } from '../../src/store/types.js';

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  stdoutBytes: Buffer;
}

class Capture extends Writable {
  readonly chunks: Buffer[] = [];
  isTTY = false;
  override _write(chunk: Buffer | string, _encoding: BufferEncoding, callback: () => void): void {
    this.chunks.push(Buffer.from(chunk));
    callback();
  }
  bytes(): Buffer {
    return Buffer.concat(this.chunks);
  }
}

export async function cli(...args: string[]): Promise<CliResult> {
  const stdout = new Capture();
  const stderr = new Capture();
  const code = await run(args, { stdout, stderr });
  return { code, stdout: stdout.bytes().toString('utf8'), stderr: stderr.bytes().toString('utf8'), stdoutBytes: stdout.bytes() };
}

export const CLI_ENTRY = new URL('../../dist/src/cli/main.js', import.meta.url).pathname;

/** The built command as a child process (for signals and real exit codes). */
export function spawnCli(args: string[], env: NodeJS.ProcessEnv = process.env) {
  return spawn(process.execPath, [CLI_ENTRY, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
}

/**
 * The store of a repository the command line made, as the command line opens it: repositories
 * `init` creates in tests are encrypted with the tests' CDP_S3_PASSWORD (vitest.config.ts).
 */
export function cliStore(url: string, options?: OpenStoreOptions): Promise<ObjectStore> {
  return unlockStore(openStore(url, options), async () => process.env['CDP_S3_PASSWORD']);
}
