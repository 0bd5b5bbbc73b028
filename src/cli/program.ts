// The cdp-s3 command line: each command is registered from its own file; this file holds what
// is common: global options and turning errors into one line and an exit code.

import { Command, CommanderError } from 'commander';
import { CdpError, FormatError } from '../errors.js';
import { type CliStreams, bindStreams } from './context.js';
import { registerBackup } from './backup.js';
import { registerDemo } from './demo.js';
import { EXIT, exitCodeFor } from './exit-codes.js';
import { registerForget } from './forget.js';
import { registerInit } from './init.js';
import { registerKey } from './key.js';
import { registerLog } from './log.js';
import { registerRestore } from './restore.js';
import { registerProtect } from './protect.js';
import { registerPrune } from './prune.js';
import { registerScan } from './scan.js';
import { registerServe } from './serve.js';
import { registerStatus } from './status.js';
import { registerUndelete } from './undelete.js';
import { registerVerify } from './verify.js';

export type RunOptions = Partial<CliStreams>;

export function buildProgram(streams: CliStreams = { stdout: process.stdout, stderr: process.stderr }): Command {
  const { stderr } = streams;
  const program = new Command('cdp-s3')
    .description('continuous data protection of disks into S3-compatible object storage')
    .option('--repo <url>', 'repository: s3://bucket/prefix, file:///path or a directory (default: $CDP_S3_REPO)')
    .option('--endpoint <url>', 'S3-compatible endpoint, e.g. http://127.0.0.1:9000 for MinIO (default: $AWS_ENDPOINT_URL)')
    .option('--region <name>', 'S3 region (default: the AWS configuration, else us-east-1)')
    .option('--path-style', 'path-style S3 addressing (the default with --endpoint)')
    .option('--json', 'print the result as JSON')
    .option('--no-progress', 'no progress bar, even on a terminal')
    .option('--request-timeout <duration>', 'a store request attempt that moves no data gives up after this, one moving data after this much more per 10 MiB (default 10s)')
    .option('--debug', 'print stack traces with errors, and each store retry')
    .option('--password-file <file>', "the repository's password, read from this file's first line (default: $CDP_S3_PASSWORD, else asked on a terminal)")
    .option('--force-unlock', 'remove stale repository locks first (only when no other cdp-s3 process is writing)')
    .showHelpAfterError('(run cdp-s3 --help for usage)')
    .exitOverride()
    .configureOutput({ writeErr: (text) => stderr.write(text), writeOut: (text) => streams.stdout.write(text) });
  bindStreams(program, streams);
  registerInit(program);
  registerKey(program);
  registerBackup(program);
  registerLog(program);
  registerRestore(program);
  registerScan(program);
  registerProtect(program);
  registerStatus(program);
  registerServe(program);
  registerVerify(program);
  registerForget(program);
  registerPrune(program);
  registerUndelete(program);
  registerDemo(program);
  for (const command of program.commands) {
    command.exitOverride().configureOutput({ writeErr: (text) => stderr.write(text), writeOut: (text) => streams.stdout.write(text) });
  }
  return program;
}

/** Runs one command line; returns the exit code instead of exiting. */
export async function run(argv: string[], options: RunOptions = {}): Promise<number> {
  const stderr = options.stderr ?? process.stderr;
  const streams: CliStreams = { stdout: options.stdout ?? process.stdout, stderr };
  const program = buildProgram(streams);
  const debug = argv.includes('--debug');
  try {
    await program.parseAsync(argv, { from: 'user' });
    return streams.exitCode ?? EXIT.ok;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Help and version are not errors; commander has already printed its message.
      return error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.code === 'commander.help' ? EXIT.ok : EXIT.usage;
    }
    if (error instanceof CdpError) {
      const code = exitCodeFor(error.code);
      // The reader closed the pipe on purpose (`| head`): stop quietly, like a command SIGPIPE ends.
      if (code === EXIT.outputClosed && !debug) return code;
      // Damage is not fixed by retrying; say what still helps.
      const local = error instanceof FormatError && error.what.startsWith('dirty region log');
      // A repository of another format version is not damaged: its message says what to do.
      const otherFormat = error instanceof FormatError && error.code === 'FORMAT_UNSUPPORTED_VERSION' && error.what === 'config';
      const hint = code === EXIT.integrity && !local && !otherFormat ? ' (stored data is damaged; other points in time may still restore: see cdp-s3 log)' : '';
      stderr.write(`cdp-s3: ${error.message}${hint}\n`);
      if (debug && error.stack !== undefined) stderr.write(`${error.stack}\n`);
      return code;
    }
    stderr.write(`cdp-s3: unexpected error: ${(error as Error).message ?? String(error)}\n`);
    if (debug && error instanceof Error && error.stack !== undefined) stderr.write(`${error.stack}\n`);
    else stderr.write('cdp-s3: run again with --debug for details, and please report it\n');
    return EXIT.internal;
  }
}

