// The one place where store layers are stacked: adapter → per-attempt timeout (S3 only: local
// I/O cannot be aborted) → concurrency limit → retry. Retry sits outside the limit so a call
// sleeping out its backoff does not hold a slot; the timeout sits inside it so waiting for a
// slot does not count against an attempt.

import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { UsageError } from '../errors.js';
import { endpointProblem, redactUserinfo } from './endpoint.js';
import { FsStore } from './fs.js';
import { hasBadSegment, isBucketName } from './paths.js';
import { LimitedStore } from './limit.js';
import { RetryingStore, type RetryOptions } from './retry.js';
import { TimeoutStore, checkTimeoutOptions, type TimeoutOptions } from './timeout.js';
import type { DeleteManyOptions, GetOptions, ListOptions, ObjectInfo, ObjectLockState, ObjectStore, ObjectVersion, PutOptions, Retention } from './types.js';

export type RepoUrl = { kind: 's3'; bucket: string; prefix: string } | { kind: 'fs'; path: string };

export interface OpenStoreOptions {
  endpoint?: string;
  region?: string;
  forcePathStyle?: boolean;
  /** Store calls in flight at once. Default 8. */
  concurrency?: number;
  retry?: RetryOptions;
  /** Per-attempt timeouts of S3 requests (a local directory has none). */
  timeout?: TimeoutOptions;
}

const FORMS = 's3://bucket[/prefix], file:///absolute/path, or a directory path';

/**
 * Parses a repository location: `s3://bucket/prefix` (prefix optional, without leading or
 * trailing '/'), `file:///abs/path`, or a plain path resolved against `cwd`.
 */
export function parseRepoUrl(url: string, cwd: string = process.cwd()): RepoUrl {
  if (url === '') throw new UsageError(`empty repository location: use ${FORMS}`);
  const scheme = /^([a-zA-Z][a-zA-Z0-9+.-]*):/.exec(url)?.[1]?.toLowerCase();
  if (scheme === 's3') {
    const match = /^s3:\/\/([^/]*)(?:\/(.*))?$/i.exec(url);
    const bucket = match?.[1] ?? '';
    if (!isBucketName(bucket)) {
      throw new UsageError(`bad S3 repository ${JSON.stringify(url)}: the bucket name may hold only letters, digits, '.', '-' and '_'; use s3://bucket[/prefix]`);
    }
    // One trailing '/' is allowed; otherwise every segment must name a directory level.
    const prefix = (match?.[2] ?? '').replace(/\/$/, '');
    if (prefix !== '' && hasBadSegment(prefix)) {
      throw new UsageError(`bad S3 repository ${JSON.stringify(url)}: the prefix may not have empty, '.' or '..' segments; use s3://bucket[/prefix] with a plain prefix such as hosts/db1`);
    }
    return { kind: 's3', bucket, prefix };
  }
  if (scheme === 'file') {
    try {
      return { kind: 'fs', path: fileURLToPath(url) };
    } catch (error) {
      throw new UsageError(`bad file repository ${JSON.stringify(url)}: use file:///absolute/path`, { cause: error });
    }
  }
  // Only 'scheme://' is taken as a URL, so a relative path like 'backups:old' stays a path.
  if (scheme !== undefined && url.startsWith('://', scheme.length)) {
    throw new UsageError(`unknown repository scheme ${scheme}:// in ${JSON.stringify(url)}: use ${FORMS}`);
  }
  return { kind: 'fs', path: resolve(cwd, url) };
}

/** Opens the repository store at `url` with timeouts, a concurrency limit and retries stacked on. */
export function openStore(url: string, options: OpenStoreOptions = {}): ObjectStore {
  const parsed = parseRepoUrl(url);
  const timeout = checkTimeoutOptions(options.timeout);
  let adapter: ObjectStore;
  if (parsed.kind === 's3') {
    checkEndpoint(options.endpoint);
    // The AWS SDK takes ~130 ms to load: only S3 repositories pay for it.
    adapter = new LazyStore(`s3://${parsed.bucket}/${parsed.prefix}`, async () => {
      const { S3Store } = await import('./s3.js');
      // Inside the lazy load, so loading the SDK does not count against the first attempt.
      const s3 = new S3Store({
        bucket: parsed.bucket,
        prefix: parsed.prefix,
        ...(options.endpoint !== undefined ? { endpoint: options.endpoint } : {}),
        ...(options.region !== undefined ? { region: options.region } : {}),
        ...(options.forcePathStyle !== undefined ? { forcePathStyle: options.forcePathStyle } : {}),
      });
      return new TimeoutStore(s3, timeout);
    });
  } else {
    adapter = new FsStore(parsed.path);
  }
  const limited = new LimitedStore(adapter, options.concurrency !== undefined ? { concurrency: options.concurrency } : {});
  return new RetryingStore(limited, options.retry);
}

/** The endpoint S3 requests will go to (the option, else the environment) must be an http(s) URL. */
function checkEndpoint(option: string | undefined): void {
  const [name, value] =
    option !== undefined
      ? ['--endpoint', option]
      : process.env['AWS_ENDPOINT_URL_S3']
        ? ['AWS_ENDPOINT_URL_S3', process.env['AWS_ENDPOINT_URL_S3']]
        : ['AWS_ENDPOINT_URL', process.env['AWS_ENDPOINT_URL']];
  if (value === undefined || (value === '' && option === undefined)) return;
  const problem = endpointProblem(value);
  if (problem !== undefined) {
    throw new UsageError(`${name} ${JSON.stringify(redactUserinfo(value))} ${problem}: give the server's URL, e.g. http://127.0.0.1:9000 or https://s3.example.com`);
  }
}

/** Builds its adapter on first use, so that loading the adapter's code costs only when used. */
class LazyStore implements ObjectStore {
  private adapter: Promise<ObjectStore> | undefined;

  constructor(
    readonly location: string,
    private readonly create: () => Promise<ObjectStore>,
  ) {}

  private inner(): Promise<ObjectStore> {
    this.adapter ??= this.create();
    return this.adapter;
  }

  async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    return (await this.inner()).get(key, options);
  }

  async put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    return (await this.inner()).put(key, body, options);
  }

  async head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    return (await this.inner()).head(key, options);
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    yield* (await this.inner()).list(prefix, options);
  }

  async deleteMany(keys: readonly string[], options?: DeleteManyOptions): Promise<void> {
    return (await this.inner()).deleteMany(keys, options);
  }

  async objectLock(options?: { signal?: AbortSignal }): Promise<ObjectLockState> {
    return (await this.inner()).objectLock(options);
  }

  async retain(key: string, retention: Retention, options?: { signal?: AbortSignal; versionId?: string }): Promise<void> {
    return (await this.inner()).retain(key, retention, options);
  }

  async *listVersions(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectVersion> {
    yield* (await this.inner()).listVersions(prefix, options);
  }

  async delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    return (await this.inner()).delete(key, options);
  }

  async sync(options?: { signal?: AbortSignal }): Promise<void> {
    if (this.adapter !== undefined) await (await this.adapter).sync(options);
  }
}
