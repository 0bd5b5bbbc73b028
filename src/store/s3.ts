// ObjectStore over S3 and S3-compatible servers (MinIO, Ceph, s3rver in tests).
// Credentials come only from the SDK's default chain (env, shared profile, instance role), never
// from options, so they never appear on a command line. The client does no retries of its own:
// RetryingStore (retry.ts) retries what classifyS3Error calls retryable.

import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  GetObjectLockConfigurationCommand,
  HeadObjectCommand,
  ListObjectVersionsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  PutObjectRetentionCommand,
  S3Client,
  UploadPartCommand,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import pLimit from 'p-limit';
import { AbortedError, CdpError, InvalidArgumentError, StoreError, throwIfAborted } from '../errors.js';
import { endpointProblem, redactUserinfo } from './endpoint.js';
import { hasBadSegment, isBucketName } from './paths.js';
import {
  type DeleteManyOptions,
  type GetOptions,
  type ListOptions,
  type LockMode,
  type ObjectInfo,
  type ObjectLockState,
  type ObjectStore,
  type ObjectVersion,
  type PutOptions,
  type Retention,
  checkDeleteBatch,
} from './types.js';

const MiB = 1024 * 1024;
/** S3's limits: parts are at least 5 MiB (except the last), at most 10 000 of them. */
const MIN_PART_SIZE = 5 * MiB;
const MAX_PARTS = 10_000;
/** S3's limit for one PutObject. */
const MAX_SINGLE_PUT = 5 * 1024 * MiB;
/** Parts of one multipart upload in flight at once. */
const PART_CONCURRENCY = 4;

export interface S3StoreOptions {
  bucket: string;
  /** Key prefix inside the bucket; '' for the bucket root. A trailing '/' is optional. */
  prefix: string;
  /** e.g. http://127.0.0.1:9000 for MinIO; defaults to $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL. */
  endpoint?: string;
  region?: string;
  /** Path-style URLs (endpoint/bucket/key); defaults to true when an endpoint is set. */
  forcePathStyle?: boolean;
  /** A preconfigured client (tests); the endpoint, region and path-style options are then unused. */
  client?: S3Client;
  /** Default 16 MiB; at least 5 MiB. */
  partSize?: number;
  /** Bodies larger than this use a multipart upload, except conditional puts (see put). Default 64 MiB. */
  multipartThreshold?: number;
}

export class S3Store implements ObjectStore {
  readonly location: string;
  readonly bucket: string;
  private readonly base: string;
  private readonly endpoint: string | undefined;
  private readonly client: S3Client;
  private readonly partSize: number;
  private readonly multipartThreshold: number;

  constructor(options: S3StoreOptions) {
    if (!isBucketName(options.bucket)) {
      throw new InvalidArgumentError(`S3 bucket name ${JSON.stringify(options.bucket)} is not a bucket name: letters, digits, '.', '-' and '_' only`);
    }
    const prefix = options.prefix.replace(/\/$/, '');
    if (prefix !== '' && hasBadSegment(prefix)) {
      throw new InvalidArgumentError(`S3 prefix ${JSON.stringify(options.prefix)} may not have empty, '.' or '..' segments (they would leave the repository)`);
    }
    this.bucket = options.bucket;
    this.base = options.prefix === '' ? '' : options.prefix.replace(/\/$/, '') + '/';
    this.location = `s3://${options.bucket}/${options.prefix}`;
    this.partSize = options.partSize ?? 16 * MiB;
    this.multipartThreshold = options.multipartThreshold ?? 64 * MiB;
    if (!Number.isSafeInteger(this.partSize) || this.partSize < MIN_PART_SIZE) {
      throw new InvalidArgumentError(`S3 part size ${this.partSize} is below S3's minimum of ${MIN_PART_SIZE} bytes`);
    }
    if (!(this.multipartThreshold >= this.partSize)) {
      throw new InvalidArgumentError(`S3 multipart threshold ${this.multipartThreshold} must be at least the part size ${this.partSize}`);
    }
    const env = process.env;
    const endpoint = options.endpoint ?? nonEmpty(env['AWS_ENDPOINT_URL_S3']) ?? nonEmpty(env['AWS_ENDPOINT_URL']);
    const problem = endpoint === undefined ? undefined : endpointProblem(endpoint);
    if (problem !== undefined) throw new InvalidArgumentError(`S3 endpoint ${JSON.stringify(redactUserinfo(endpoint!))} ${problem}: give an http:// or https:// URL`);
    // Messages name the endpoint, never the user:password@ a URL may carry.
    this.endpoint = endpoint === undefined ? undefined : redactUserinfo(endpoint);
    if (options.client !== undefined) {
      this.client = options.client;
    } else {
      const config: S3ClientConfig = {
        maxAttempts: 1,
        // The SDK's default streams checksums in aws-chunked framing, which some S3-compatible
        // servers store as data; we send plain Buffers and verify what we read ourselves.
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
        forcePathStyle: options.forcePathStyle ?? endpoint !== undefined,
      };
      if (endpoint !== undefined) config.endpoint = endpoint;
      config.region = options.region ?? regionOrDefault(config);
      this.client = new S3Client(config);
    }
  }

  async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    const signal = options?.signal;
    const range = options?.range;
    if (range !== undefined) {
      const { offset, length } = range;
      if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
        throw new StoreError('permanent', `invalid range ${offset}+${length} for ${key}: offset and length must be non-negative integers`, { key });
      }
      // An HTTP range cannot be empty; check existence and bounds with a HEAD instead.
      if (length === 0) {
        const info = await this.head(key, options);
        if (info === undefined) throw this.notFound(key);
        if (offset > info.size) throw this.pastEnd(key, offset, length, info.size);
        return new Uint8Array(0);
      }
    }
    return this.call(key, signal, async () => {
      const output = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: this.fullKey(key),
          // Always explicit first-last: some servers mis-serve suffix ranges (bytes=-N).
          ...(range !== undefined ? { Range: `bytes=${range.offset}-${range.offset + range.length - 1}` } : {}),
        }),
        signal === undefined ? {} : { abortSignal: signal },
      );
      if (output.Body === undefined) throw new StoreError('retryable', `GET ${key} in ${this.location} returned no body`, { key });
      const expected = range?.length ?? output.ContentLength;
      // The headers are in; the body is still to come (the per-attempt timeout sizes its budget by it).
      if (range === undefined && output.ContentLength !== undefined) options?.onBodyLength?.(output.ContentLength);
      const into = options?.into;
      let body: Uint8Array;
      if (into !== undefined && expected !== undefined && into.length >= expected && isAsyncIterable(output.Body)) {
        const filled = await readBodyInto(output.Body, into.subarray(0, expected));
        if (filled === undefined) {
          throw new StoreError('retryable', `GET ${key} in ${this.location} returned more than the ${expected} bytes asked for`, { key });
        }
        body = filled;
      } else {
        body = await output.Body.transformToByteArray();
      }
      if (body.length === expected) return body;
      if (range !== undefined && body.length < range.length) {
        // S3 answers a range that ends past the object with the bytes that exist.
        const total = totalFromContentRange(output.ContentRange);
        if (total !== undefined && range.offset + range.length > total) throw this.pastEnd(key, range.offset, range.length, total);
      }
      throw new StoreError(
        'retryable',
        `GET ${key} in ${this.location} returned ${body.length} bytes, expected ${expected ?? 'a Content-Length'} (truncated response)`,
        { key },
      );
    });
  }

  async put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    const signal = options?.signal;
    const ifAbsent = options?.ifAbsent === true ? { IfNoneMatch: '*' } : {};
    // A conditional put is always one PutObject: Ceph RGW (16.2) ignores If-None-Match on
    // CompleteMultipartUpload, so a multipart upload would replace an existing object.
    if (options?.ifAbsent === true && body.length > MAX_SINGLE_PUT) {
      throw new StoreError('permanent', `${key} (${body.length} bytes) is too large for a conditional put: S3 takes at most ${MAX_SINGLE_PUT} bytes in one PutObject`, { key });
    }
    const retention = options?.retention;
    if (body.length > this.multipartThreshold && options?.ifAbsent !== true) {
      await this.putMultipart(key, body, signal);
      // Ceph RGW (16.2) drops Object Lock headers on multipart uploads: set it after.
      if (retention !== undefined) await this.retain(key, retention, signal === undefined ? {} : { signal });
      return;
    }
    // A put with a retention must carry a checksum (S3 refuses it without one); CRC32 of a
    // Buffer goes in a header, not in aws-chunked framing.
    const locked =
      retention === undefined
        ? {}
        : { ObjectLockMode: lockModeName(retention.mode), ObjectLockRetainUntilDate: new Date(retention.until), ChecksumAlgorithm: 'CRC32' as const };
    await this.call(key, signal, () =>
      this.client.send(
        new PutObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key), Body: body, ContentLength: body.length, ...ifAbsent, ...locked }),
        signal === undefined ? {} : { abortSignal: signal },
      ),
    );
  }

  async retain(key: string, retention: Retention, options?: { signal?: AbortSignal; versionId?: string }): Promise<void> {
    const signal = options?.signal;
    await this.call(key, signal, () =>
      this.client.send(
        new PutObjectRetentionCommand({
          Bucket: this.bucket,
          Key: this.fullKey(key),
          ...(options?.versionId !== undefined ? { VersionId: options.versionId } : {}),
          Retention: { Mode: lockModeName(retention.mode), RetainUntilDate: new Date(retention.until) },
        }),
        signal === undefined ? {} : { abortSignal: signal },
      ),
    ).catch((error: unknown) => {
      // S3 answers AccessDenied both for missing permissions and for a retention it will not shorten.
      if (!(error instanceof StoreError && error.kind === 'auth')) throw error;
      throw new StoreError(
        'auth',
        `setting the Object Lock of ${key} in bucket ${this.bucket} to ${retention.mode} until ${new Date(retention.until).toISOString()} was refused: ` +
          'a retention can only be lengthened, in the same mode, and the credentials need s3:PutObjectRetention',
        { key, cause: error },
      );
    });
  }

  async objectLock(options?: { signal?: AbortSignal }): Promise<ObjectLockState> {
    const signal = options?.signal;
    try {
      const reply = await this.call(undefined, signal, () =>
        this.client.send(new GetObjectLockConfigurationCommand({ Bucket: this.bucket }), signal === undefined ? {} : { abortSignal: signal }),
      );
      const config = reply.ObjectLockConfiguration;
      if (config?.ObjectLockEnabled === 'Enabled') {
        const rule = config.Rule?.DefaultRetention;
        if (rule?.Mode === undefined) return { enabled: true };
        const period = rule.Days !== undefined ? `${rule.Days} days` : `${rule.Years ?? '?'} years`;
        return { enabled: true, defaultRetention: `${rule.Mode.toLowerCase()}, ${period}` };
      }
      return { enabled: false, why: `bucket ${this.bucket} does not have Object Lock enabled` };
    } catch (error) {
      if (!(error instanceof StoreError)) throw error;
      const sdk = error.cause as { name?: string; $metadata?: { httpStatusCode?: number } } | undefined;
      const name = sdk?.name ?? '';
      const status = sdk?.$metadata?.httpStatusCode;
      // A missing bucket is kind 'no-bucket' and thrown below; any other 404 means no lock configuration.
      if (name === 'ObjectLockConfigurationNotFoundError' || error.kind === 'not-found') {
        return { enabled: false, why: `bucket ${this.bucket} was not created with Object Lock enabled` };
      }
      if (status === 501 || status === 405 || name === 'NotImplemented' || name === 'MethodNotAllowed') {
        return { enabled: false, why: `the S3 server at ${this.endpoint ?? 'the AWS S3 endpoint'} does not implement Object Lock` };
      }
      throw error;
    }
  }

  async *listVersions(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectVersion> {
    const signal = options?.signal;
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    for (;;) {
      const page = await this.call(undefined, signal, () =>
        this.client.send(
          new ListObjectVersionsCommand({
            Bucket: this.bucket,
            Prefix: this.base + prefix,
            ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
            ...(versionMarker !== undefined ? { VersionIdMarker: versionMarker } : {}),
          }),
          signal === undefined ? {} : { abortSignal: signal },
        ),
      );
      // A page lists versions and delete markers apart: merge them back into key order.
      const items: ObjectVersion[] = [];
      for (const v of page.Versions ?? []) {
        if (v.Key === undefined) continue;
        items.push({ key: v.Key.slice(this.base.length), versionId: versionOf(v.VersionId), latest: v.IsLatest === true, deleteMarker: false, size: v.Size ?? 0 });
      }
      for (const m of page.DeleteMarkers ?? []) {
        if (m.Key === undefined) continue;
        items.push({ key: m.Key.slice(this.base.length), versionId: versionOf(m.VersionId), latest: m.IsLatest === true, deleteMarker: true, size: 0 });
      }
      items.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      yield* items;
      if (page.IsTruncated !== true) return;
      keyMarker = page.NextKeyMarker;
      versionMarker = page.NextVersionIdMarker;
      if (keyMarker === undefined) return;
    }
  }

  async head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    const signal = options?.signal;
    try {
      const output = await this.call(key, signal, () =>
        this.client.send(
          new HeadObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key) }),
          signal === undefined ? {} : { abortSignal: signal },
        ),
      );
      const info: ObjectInfo = { key, size: output.ContentLength ?? 0 };
      const mode = output.ObjectLockMode === 'GOVERNANCE' ? 'governance' : output.ObjectLockMode === 'COMPLIANCE' ? 'compliance' : undefined;
      if (mode !== undefined && output.ObjectLockRetainUntilDate !== undefined) info.retention = { mode, until: output.ObjectLockRetainUntilDate.getTime() };
      const versionId = versionOf(output.VersionId);
      if (versionId !== undefined) info.versionId = versionId;
      return info;
    } catch (error) {
      // A HEAD response has no body, so a missing bucket also looks like a plain 404 here.
      if (error instanceof StoreError && error.kind === 'not-found') return undefined;
      throw error;
    }
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    const signal = options?.signal;
    let left = options?.limit ?? Infinity;
    if (left <= 0) return;
    let token: string | undefined;
    do {
      const page = await this.call(undefined, signal, () =>
        this.client.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: this.base + prefix,
            ...(token !== undefined ? { ContinuationToken: token } : options?.startAfter !== undefined ? { StartAfter: this.base + options.startAfter } : {}),
            ...(left < 1000 ? { MaxKeys: left } : {}),
          }),
          signal === undefined ? {} : { abortSignal: signal },
        ),
      );
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined) continue;
        const key = object.Key.slice(this.base.length);
        // A server that ignores StartAfter must not make the caller see earlier keys.
        if (options?.startAfter !== undefined && key <= options.startAfter) continue;
        yield { key, size: object.Size ?? 0 };
        if (--left === 0) return;
      }
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  /** S3 puts are durable when they return: nothing to do. */
  async sync(): Promise<void> {}

  async delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    const signal = options?.signal;
    try {
      await this.call(key, signal, () =>
        this.client.send(
          new DeleteObjectCommand({ Bucket: this.bucket, Key: this.fullKey(key) }),
          signal === undefined ? {} : { abortSignal: signal },
        ),
      );
    } catch (error) {
      if (error instanceof StoreError && error.kind === 'not-found') return;
      throw error;
    }
  }

  /** One DeleteObjects request (Quiet: only failures come back); the first failure is thrown. */
  async deleteMany(keys: readonly string[], options?: DeleteManyOptions): Promise<void> {
    checkDeleteBatch(keys, options);
    if (keys.length === 0) return;
    const signal = options?.signal;
    const versions = options?.versionIds;
    const objects = keys.map((key, i) => {
      const VersionId = versions?.[i];
      return VersionId === undefined ? { Key: this.fullKey(key) } : { Key: this.fullKey(key), VersionId };
    });
    const reply = await this.call(keys[0], signal, () =>
      this.client.send(
        new DeleteObjectsCommand({ Bucket: this.bucket, Delete: { Objects: objects, Quiet: true } }),
        signal === undefined ? {} : { abortSignal: signal },
      ),
    );
    const failed = (reply.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
    if (failed.length > 0) {
      const first = failed[0]!;
      const retryable = ['InternalError', 'SlowDown', 'ServiceUnavailable', 'RequestTimeout'].includes(first.Code ?? '');
      const kind = first.Code === 'AccessDenied' ? 'auth' : retryable ? 'retryable' : 'permanent';
      throw new StoreError(kind, `deleting ${failed.length} of ${keys.length} objects failed, first ${first.Key ?? '?'}: ${first.Code ?? 'error'} ${first.Message ?? ''}`.trim(), { key: first.Key });
    }
  }

  private async putMultipart(key: string, body: Uint8Array, signal: AbortSignal | undefined): Promise<void> {
    const partCount = Math.ceil(body.length / this.partSize);
    if (partCount > MAX_PARTS) {
      throw new StoreError('permanent', `${key} (${body.length} bytes) needs ${partCount} parts of ${this.partSize} bytes; S3 allows ${MAX_PARTS}: raise the part size`, { key });
    }
    const Key = this.fullKey(key);
    const sendOptions = signal === undefined ? {} : { abortSignal: signal };
    const { UploadId } = await this.call(key, signal, () =>
      this.client.send(new CreateMultipartUploadCommand({ Bucket: this.bucket, Key }), sendOptions),
    );
    if (UploadId === undefined) throw new StoreError('retryable', `CreateMultipartUpload for ${key} in ${this.location} returned no upload id`, { key });
    try {
      const limit = pLimit(PART_CONCURRENCY);
      const parts = await Promise.all(
        Array.from({ length: partCount }, (_, index) =>
          limit(async () => {
            const PartNumber = index + 1;
            const chunk = body.subarray(index * this.partSize, Math.min(body.length, PartNumber * this.partSize));
            const { ETag } = await this.call(key, signal, () =>
              this.client.send(
                new UploadPartCommand({ Bucket: this.bucket, Key, UploadId, PartNumber, Body: chunk, ContentLength: chunk.length }),
                sendOptions,
              ),
            );
            return { PartNumber, ETag };
          }),
        ),
      );
      await this.call(key, signal, () =>
        this.client.send(
          new CompleteMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId, MultipartUpload: { Parts: parts } }),
          sendOptions,
        ),
      );
    } catch (error) {
      // Best effort: an upload left behind costs storage until a lifecycle rule removes it.
      await this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key, UploadId })).catch(() => undefined);
      throw error;
    }
  }

  /** Runs one SDK call, turning its failures into StoreError (or AbortedError when cancelled). */
  private async call<T>(key: string | undefined, signal: AbortSignal | undefined, fn: () => Promise<T>): Promise<T> {
    throwIfAborted(signal);
    try {
      return await fn();
    } catch (error) {
      if (signal?.aborted === true) throw new AbortedError('cancelled', { cause: error });
      if (error instanceof CdpError) throw error;
      throw classifyS3Error(error, key, { bucket: this.bucket, endpoint: this.endpoint });
    }
  }

  private fullKey(key: string): string {
    if (hasBadSegment(key)) {
      throw new StoreError('permanent', `invalid key ${JSON.stringify(key)} in ${this.location}: keys are '/'-separated relative paths without empty, '.' or '..' segments`, { key });
    }
    return this.base + key;
  }

  private notFound(key: string): StoreError {
    return new StoreError('not-found', `${key} does not exist in ${this.location}`, { key });
  }

  private pastEnd(key: string, offset: number, length: number, size: number): StoreError {
    return new StoreError('permanent', `range ${offset}+${length} is past the end of ${key} (${size} bytes) in ${this.location}`, { key });
  }
}

const AUTH_NAMES = new Set(['AccessDenied', 'Forbidden', 'InvalidAccessKeyId', 'SignatureDoesNotMatch', 'ExpiredToken', 'InvalidToken', 'TokenRefreshRequired']);
const RETRYABLE_NAMES = new Set(['SlowDown', 'RequestTimeout', 'RequestTimeTooSkewed', 'InternalError', 'ServiceUnavailable', 'TimeoutError', 'RequestTimeoutException', 'ConditionalRequestConflict', 'OperationAborted']);
const NETWORK_CODES = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNABORTED', 'ENETUNREACH', 'EHOSTUNREACH', 'ENETDOWN', 'EHOSTDOWN', 'UND_ERR_SOCKET']);
const UNREACHABLE_CODES = new Set(['ECONNREFUSED', 'ENOTFOUND', 'EAI_AGAIN']);

interface SdkErrorShape {
  name?: unknown;
  code?: unknown;
  Code?: unknown;
  message?: unknown;
  $metadata?: { httpStatusCode?: number };
  errors?: unknown;
}

/**
 * Classifies an S3 SDK or network error as a StoreError whose one-line message names the key or
 * bucket and what to do. `where` adds the bucket and endpoint to messages.
 */
export function classifyS3Error(error: unknown, key?: string, where?: { bucket?: string; endpoint?: string | undefined }): StoreError {
  const e = (typeof error === 'object' && error !== null ? error : {}) as SdkErrorShape;
  const name = typeof e.name === 'string' ? e.name : '';
  // Node puts the errno in `code`; happy-eyeballs connects wrap several in an AggregateError.
  const inner = Array.isArray(e.errors) ? (e.errors[0] as SdkErrorShape | undefined) : undefined;
  const code = [e.code, e.Code, inner?.code].find((c): c is string => typeof c === 'string') ?? '';
  const status = e.$metadata?.httpStatusCode;
  const message = typeof e.message === 'string' ? e.message : String(error);
  // The SDK says 'UnknownError' when the server sent no message (Ceph RGW's are empty).
  const detail = message === 'UnknownError' || message.trim() === '' ? '' : `: ${oneLine(message)}`;
  const bucket = where?.bucket;
  const what = key !== undefined ? `${key}${bucket !== undefined ? ` in bucket ${bucket}` : ''}` : bucket !== undefined ? `bucket ${bucket}` : 'S3';
  const endpoint = redactUserinfo(where?.endpoint ?? 'the AWS S3 endpoint');
  const options = key !== undefined ? { key, cause: error } : { cause: error };
  const make = (kind: StoreError['kind'], text: string): StoreError => new StoreError(kind, text, options);

  if (name === 'NoSuchBucket' || code === 'NoSuchBucket') {
    return make('no-bucket', `${bucket !== undefined ? `bucket ${bucket}` : 'the bucket'} does not exist at ${endpoint}: create it or fix --repo`);
  }
  if (name === 'NoSuchKey' || name === 'NotFound' || name === 'NoSuchUpload' || status === 404) {
    return make('not-found', `${what} does not exist`);
  }
  if (name === 'CredentialsProviderError') {
    return make('auth', `no AWS credentials found for ${what}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE (the SDK's default chain)`);
  }
  if (AUTH_NAMES.has(name) || AUTH_NAMES.has(code) || status === 401 || status === 403) {
    // An error without a body (every HEAD) reaches us named 'Unknown': the status says more.
    const why = name !== '' && name !== 'Unknown' ? name : status !== undefined ? `HTTP ${status}` : 'no reason given';
    return make('auth', `access to ${what} denied (${why}): check the credentials from the AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) and their permissions`);
  }
  if (name === 'PreconditionFailed' || status === 412) {
    return make('exists', `${what} already exists`);
  }
  if (name === 'InvalidRange' || status === 416) {
    return make('permanent', `range requested from ${what} is past the end of the object`);
  }
  if (UNREACHABLE_CODES.has(code) || UNREACHABLE_CODES.has(name)) {
    return make('unreachable', `cannot reach ${endpoint} (${code || name}): check the endpoint (--endpoint or AWS_ENDPOINT_URL) and the network`);
  }
  if (
    RETRYABLE_NAMES.has(name) ||
    name.startsWith('Throttl') ||
    NETWORK_CODES.has(code) ||
    /socket hang up|ECONNRESET|EPIPE/i.test(message) ||
    status === 429 ||
    (status !== undefined && status >= 500)
  ) {
    return make('retryable', `${what}: ${name || code || 'error'} (${status ?? 'no HTTP status'})${detail}`);
  }
  if (/region is missing/i.test(message)) {
    return make('permanent', `no AWS region configured for ${what}: set AWS_REGION or pass --region`);
  }
  return make('permanent', `${what}: ${name || code || 'error'}${status !== undefined ? ` (HTTP ${status})` : ''}${detail}`);
}

function oneLine(text: string): string {
  return redactUserinfo(text.replace(/\s+/g, ' ').trim());
}

/** Where S3 is when the AWS configuration names no region: the default that --region promises. */
export const DEFAULT_REGION = 'us-east-1';

/**
 * The SDK's own region chain (AWS_REGION, the shared config's profile, instance metadata), but
 * us-east-1 where it finds none instead of failing every request with "Region is missing".
 */
function regionOrDefault(config: S3ClientConfig): () => Promise<string> {
  // The chain is what a client without a region resolves; a probe client lends it, so the
  // precedence stays the SDK's.
  const probe = new S3Client({ ...config, region: undefined });
  const chain = probe.config.region;
  probe.destroy();
  return async () => {
    try {
      return await chain();
    } catch (error) {
      if (/region is missing/i.test((error as Error).message ?? '')) return DEFAULT_REGION;
      throw error;
    }
  };
}

function lockModeName(mode: LockMode): 'GOVERNANCE' | 'COMPLIANCE' {
  return mode === 'governance' ? 'GOVERNANCE' : 'COMPLIANCE';
}

/** A version id, or undefined for an unversioned bucket's (which S3 calls "null"). */
function versionOf(id: string | undefined): string | undefined {
  return id === undefined || id === '' || id === 'null' ? undefined : id;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

/** The object size from a Content-Range header `bytes a-b/size`, when the server states it. */
function totalFromContentRange(header: string | undefined): number | undefined {
  const match = header === undefined ? null : /\/(\d+)\s*$/.exec(header);
  return match?.[1] === undefined ? undefined : Number(match[1]);
}

function isAsyncIterable(value: unknown): value is AsyncIterable<Uint8Array> {
  return typeof value === 'object' && value !== null && Symbol.asyncIterator in value;
}

/**
 * Copies a response body into `target` as it arrives (no concatenation, and the caller's buffer
 * may be a recycled one). Returns the part filled, or undefined when the body is longer than
 * target (then it is not what was asked for).
 */
async function readBodyInto(body: AsyncIterable<Uint8Array>, target: Uint8Array): Promise<Uint8Array | undefined> {
  let filled = 0;
  for await (const chunk of body) {
    if (filled + chunk.length > target.length) {
      (body as { destroy?: () => void }).destroy?.(); // the rest is not wanted: free the connection
      return undefined;
    }
    target.set(chunk, filled);
    filled += chunk.length;
  }
  return target.subarray(0, filled);
}
