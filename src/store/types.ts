// The object store interface: the only thing the repository layer knows about where bytes go.
// Adapters (fs.ts, s3.ts) implement it and classify their own errors as StoreError kinds;
// retry and concurrency limits are wrappers (retry.ts, limit.ts) stacked by open.ts.

import { InvalidArgumentError } from '../errors.js';

/** The most keys one deleteMany takes: S3 DeleteObjects' limit. */
export const MAX_DELETE_BATCH = 1000;

/** Adapters refuse a larger batch: callers cut theirs (deleteInBatches). */
export function checkDeleteBatch(keys: readonly string[]): void {
  if (keys.length > MAX_DELETE_BATCH) throw new InvalidArgumentError(`deleteMany takes at most ${MAX_DELETE_BATCH} keys, got ${keys.length}`);
}

export interface ByteRange {
  offset: number;
  length: number;
}

export interface ObjectInfo {
  key: string;
  size: number;
}

export interface PutOptions {
  /**
   * Fail with StoreError kind 'exists' if the key already exists. Adapters use the server's
   * conditional write where it has one; where the server ignores it (some S3-compatible
   * servers), the put may still replace the object, and callers must stay correct then too.
   * The S3 adapter sends a conditional put as one PutObject whatever its size (at most 5 GiB),
   * because Ceph RGW ignores the condition on a multipart upload's completion.
   */
  ifAbsent?: boolean;
  signal?: AbortSignal;
  /**
   * The object need not be durable when put() returns, only after the next sync(). Lets a
   * local store write many objects at disk speed and wait for the disk once; stores whose puts
   * are always durable (S3) ignore it.
   */
  deferSync?: boolean;
}

export interface GetOptions {
  /** Only these bytes; a range past the end of the object is an error. */
  range?: ByteRange;
  /**
   * A buffer the adapter may read into (it must be large enough); the result is then a view of
   * it. Adapters that cannot (S3) ignore it, so callers must use the returned bytes.
   */
  into?: Uint8Array;
  signal?: AbortSignal;
  /**
   * Called once the adapter knows how many bytes the object's body holds (S3: when the response
   * headers arrive with Content-Length), before it reads them; only for a whole-object GET.
   * TimeoutStore budgets the attempt's body by it.
   */
  onBodyLength?: (bytes: number) => void;
}

export interface ListOptions {
  signal?: AbortSignal;
  /** Only keys after this one (S3 StartAfter): a listing that resumes costs no requests for what it skips. */
  startAfter?: string;
  /** At most this many keys (a hint: the listing may fetch a page of them). */
  limit?: number;
}

/**
 * Keys are '/'-separated relative paths (no empty, '.' or '..' segments). A key must not also be
 * a directory of other keys ('a' and 'a/b' together), because a filesystem store cannot hold both.
 */
export interface ObjectStore {
  /** Human-readable location, e.g. `s3://bucket/prefix` or `file:///srv/repo`; for messages. */
  readonly location: string;
  /** The whole object, or the requested range. Missing key: StoreError kind 'not-found'. */
  get(key: string, options?: GetOptions): Promise<Uint8Array>;
  /** Writes the whole object atomically: readers see the old state or the new, never a part. */
  put(key: string, body: Uint8Array, options?: PutOptions): Promise<void>;
  /** Size of the object, or undefined if it does not exist. */
  head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined>;
  /** Every key that starts with `prefix`, in ascending byte order of key. */
  list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo>;
  /** Removes the object; removing a missing key is not an error. */
  delete(key: string, options?: { signal?: AbortSignal }): Promise<void>;
  /**
   * Removes up to MAX_DELETE_BATCH objects, in one request where the store has one (S3
   * DeleteObjects); missing keys are not an error. A failure may leave some of them removed.
   */
  deleteMany(keys: readonly string[], options?: { signal?: AbortSignal }): Promise<void>;
  /** Makes every object put with deferSync durable. */
  sync(options?: { signal?: AbortSignal }): Promise<void>;
}
