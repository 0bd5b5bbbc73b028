// What every command shares: the global options, opening the store, output in text or JSON,
// Ctrl-C as an AbortSignal, and the progress bar on terminals.

import type { Command } from 'commander';
import type { Progress } from '../core/progress.js';
import { silentProgress } from '../core/progress.js';
import { AbortedError, CdpError, UsageError } from '../errors.js';
import { readFile } from 'node:fs/promises';
import type { KdfParams } from '../repo/key-files.js';
import { unlockStore } from '../repo/unlock.js';
import { openStore } from '../store/open.js';
import type { RetryInfo } from '../store/retry.js';
import type { TimeoutOptions } from '../store/timeout.js';
import type { ObjectStore } from '../store/types.js';
import { ProgressBar } from './progress-bar.js';
import { parseDuration } from './units.js';

export interface GlobalOptions {
  repo?: string;
  endpoint?: string;
  region?: string;
  pathStyle?: boolean;
  json?: boolean;
  debug?: boolean;
  /** --request-timeout: the per-attempt store timeout's base (a duration). */
  requestTimeout?: string;
  progress?: boolean;
  /** --force-unlock: writers remove every repository lock before taking their own. */
  forceUnlock?: boolean;
  /** --password-file: the repository password's file. */
  passwordFile?: string;
}

export interface CliStreams {
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stderr: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  /** A command's non-error outcome code (e.g. scan's "discrepancies found"); run() returns it. */
  exitCode?: number;
}

const streamsOf = new WeakMap<Command, CliStreams>();

/** Where the commands of `program` write (run() binds them; tests pass their own). */
export function bindStreams(program: Command, streams: CliStreams): void {
  streamsOf.set(program, streams);
}

/** Aborted on SIGINT/SIGTERM; every command's work takes its signal. */
export const interruption = new AbortController();

export class CliContext {
  constructor(
    readonly options: GlobalOptions,
    readonly stdout: CliStreams['stdout'] = process.stdout,
    readonly stderr: CliStreams['stderr'] = process.stderr,
  ) {}

  static of(command: Command): CliContext {
    let root = command;
    while (root.parent !== null) root = root.parent;
    const streams = streamsOf.get(root);
    const context = new CliContext(command.optsWithGlobals<GlobalOptions>(), streams?.stdout, streams?.stderr);
    context.streams = streams;
    return context;
  }

  private streams: CliStreams | undefined;

  /** Sets the exit code of a command that succeeded with a notable outcome. */
  setExitCode(code: number): void {
    if (this.streams !== undefined) this.streams.exitCode = code;
    else process.exitCode = code;
  }

  get signal(): AbortSignal {
    return interruption.signal;
  }

  get forceUnlock(): boolean {
    return this.options.forceUnlock === true;
  }

  get json(): boolean {
    return this.options.json === true;
  }

  /** The repository's store: --repo, else CDP_S3_REPO. */
  store(): ObjectStore {
    const url = this.options.repo ?? process.env['CDP_S3_REPO'];
    if (url === undefined || url === '') {
      throw new UsageError('no repository: pass --repo s3://bucket/prefix or --repo /path, or set CDP_S3_REPO');
    }
    const requestTimeout = this.options.requestTimeout;
    return openStore(url, {
      endpoint: this.options.endpoint,
      region: this.options.region,
      forcePathStyle: this.options.pathStyle,
      ...(requestTimeout !== undefined ? { timeout: requestTimeoutOptions(parseDuration(requestTimeout, '--request-timeout')) } : {}),
      ...(this.options.debug === true ? { retry: { onRetry: (info: RetryInfo) => this.stderr.write(`${describeRetry(info)}\n`) } } : {}),
    });
  }

  /** The repository's store, unlocked with the password when the repository is encrypted. */
  async repoStore(): Promise<ObjectStore> {
    return unlockStore(this.store(), () => this.password(), this.signal);
  }

  /**
   * The password: CDP_S3_PASSWORD, else --password-file's first line, else asked on the terminal
   * (not echoed); undefined when none of them gives one. Never taken from the command line.
   */
  async password(prompt = 'repository password: '): Promise<string | undefined> {
    const fromEnv = process.env['CDP_S3_PASSWORD'];
    if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
    const file = this.options.passwordFile;
    if (file !== undefined) return readPasswordFile(file, '--password-file');
    if (process.stdin.isTTY !== true || this.stderr.isTTY !== true) return undefined;
    return askHidden(prompt, this.stderr);
  }

  /**
   * A password to set: from the environment variable `env`, else the file `file`, else asked
   * twice on the terminal. init takes CDP_S3_PASSWORD / --password-file; key add and key passwd
   * CDP_S3_NEW_PASSWORD / --new-password-file.
   */
  async newPassword(prompt: string, source: { env: string; file: string | undefined; flag: string; otherwise: string }): Promise<string> {
    const fromEnv = process.env[source.env];
    if (fromEnv !== undefined && fromEnv !== '') return fromEnv;
    if (source.file !== undefined) return readPasswordFile(source.file, source.flag);
    if (process.stdin.isTTY === true && this.stderr.isTTY === true) {
      const given = await askHidden(prompt, this.stderr);
      if (given === '') throw new UsageError('the password is empty: choose one with at least one character');
      if ((await askHidden('the same again: ', this.stderr)) !== given) throw new UsageError('the two passwords differ; run the command again');
      return given;
    }
    throw new CdpError('PASSWORD', `no password given: set ${source.env}, pass ${source.flag} FILE, or run on a terminal${source.otherwise}`);
  }

  /**
   * scrypt parameters for keys this command creates: the default, or cheap ones when
   * CDP_S3_INSECURE_TEST_KDF=1 (the test suite: hundreds of repositories; never for real keys).
   */
  get kdf(): KdfParams | undefined {
    return process.env['CDP_S3_INSECURE_TEST_KDF'] === '1' ? { n: 1024, r: 8, p: 1 } : undefined;
  }

  /** A bar on stderr when it is a terminal (and --json is off); otherwise nothing. */
  progress(): Progress {
    if (this.json || this.options.progress === false || this.stderr.isTTY !== true) return silentProgress;
    return new ProgressBar(this.stderr);
  }

  /** Prints the result: JSON with --json, else the text. */
  result(value: unknown, text: () => string): void {
    this.stdout.write(this.json ? `${JSON.stringify(value, null, 2)}\n` : `${text()}\n`);
  }

  note(text: string): void {
    if (!this.json) this.stderr.write(`${text}\n`);
  }
}

/**
 * --request-timeout T: an attempt that moves no data gets T, and T more per 10 MiB it moves
 * (the store's defaults are the same rule for T = 10 s).
 */
export function requestTimeoutOptions(baseMs: number): TimeoutOptions {
  return { baseMs, minBytesPerSecond: (10 * 1024 * 1024 * 1000) / baseMs };
}

/** One --debug line per retry: what failed, why, and when it is tried again. */
export function describeRetry(info: RetryInfo): string {
  return `cdp-s3: ${info.operation} ${info.key} attempt ${info.attempt} failed, retrying in ${Math.round(info.delayMs)} ms: ${info.error.message}`;
}

/** A password file's first line. */
async function readPasswordFile(file: string, flag: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new UsageError(`cannot read ${flag} ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}; give a readable file holding the password`, { cause: error });
  }
  const line = text.split(/\r?\n/, 1)[0]!;
  if (line === '') throw new UsageError(`${flag} ${file} is empty: its first line is the password`);
  return line;
}

/** Reads a line from the terminal without echoing it. */
function askHidden(prompt: string, out: NodeJS.WritableStream): Promise<string> {
  const stdin = process.stdin;
  out.write(prompt);
  return new Promise((resolve, reject) => {
    let line = '';
    const done = (error?: Error): void => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.off('data', onData);
      out.write('\n');
      if (error !== undefined) reject(error);
      else resolve(line);
    };
    const onData = (chunk: Buffer): void => {
      for (const char of chunk.toString('utf8')) {
        if (char === '\r' || char === '\n') return done();
        if (char === '\u0003') return done(new AbortedError('interrupted while asking for the password'));
        if (char === '\u007f' || char === '\b') line = line.slice(0, -1);
        else line += char;
      }
    };
    stdin.setRawMode(true);
    stdin.resume();
    stdin.on('data', onData);
  });
}
