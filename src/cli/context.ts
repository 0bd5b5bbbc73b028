// What every command shares: the global options, opening the store, output in text or JSON,
// Ctrl-C as an AbortSignal, and the progress bar on terminals.

import type { Command } from 'commander';
import type { Progress } from '../core/progress.js';
import { silentProgress } from '../core/progress.js';
import { UsageError } from '../errors.js';
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
