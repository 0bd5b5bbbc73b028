// The object store interface: the only thing the repository layer knows about where bytes go.
// Adapters (fs.ts, s3.ts) implement it and classify their own errors as StoreError kinds;
// retry and concurrency limits are wrappers (retry.ts, limit.ts) stacked by open.ts.

import { InvalidArgumentError } from '../errors.js';

/** The most keys one deleteMany takes: S3 DeleteObjects' limit. */
export const MAX_DELETE_BATCH = 1000;

/** Adapters refuse a larger batch: callers cut theirs (deleteInBatches). */
export function checkDeleteBatch(keys: readonly string[], options?: DeleteManyOptions): void {
  if (keys.length > MAX_DELETE_BATCH) throw new InvalidArgumentError(`deleteMany takes at most ${MAX_DELETE_BATCH} keys, got ${keys.length}`);
  const versions = options?.versionIds;
  if (versions !== undefined && versions.length !== keys.length) throw new InvalidArgumentError(`deleteMany got ${keys.length} keys but ${versions.length} version ids`);
}

export interface ByteRange {
  offset: number;
  length: number;
}

export interface ObjectInfo {
  key: string;
  size: number;
  /**
   * head() only, on a bucket with Object Lock: until when (ms since the epoch) the current version
   * cannot be deleted or overwritten away, and in which mode. Absent: no retention.
   */
  retention?: Retention;
  /** head() only, on a versioned bucket: the current version's id (what deleteMany's versionIds take). */
  versionId?: string;
}

/** S3 Object Lock modes: governance (a privileged user may lift it) and compliance (no one may). */
export type LockMode = 'governance' | 'compliance';
export const LOCK_MODES: readonly LockMode[] = ['governance', 'compliance'];

/** An object's retention: it cannot be deleted before `until` (ms since the epoch). */
export interface Retention {
  mode: LockMode;
  until: number;
}

/** One version of an object (or a delete marker) in a versioned bucket. */
export interface ObjectVersion {
  key: string;
  /** Undefined where the store keeps no versions (a local directory): then there is only the object itself. */
  versionId: string | undefined;
  /** The current version (what get() reads), or the current delete marker. */
  latest: boolean;
  /** A delete marker: no bytes; the key reads as missing while it is the latest. */
  deleteMarker: boolean;
  size: number;
}

/**
 * Whether the bucket has Object Lock, or why it has not (for a one-line error). `defaultRetention`
 * describes a bucket rule that puts every new object under retention (e.g. "governance, 30 days").
 */
export type ObjectLockState = { enabled: true; defaultRetention?: string } | { enabled: false; why: string };

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
  /**
   * Put the object under this Object Lock retention (bucket with Object Lock only: elsewhere a
   * StoreError 'permanent'). Adapters that cannot set it with the put set it right after.
   */
  retention?: Retention;
}

export interface DeleteManyOptions {
  signal?: AbortSignal;
  /**
   * The version of each key to delete (versionIds[i] for keys[i]; undefined: the current one).
   * On a versioned bucket, deleting without a version only hides the object behind a delete
   * marker; deleting a version removes its bytes for good. Stores without versions ignore it.
   */
  versionIds?: readonly (string | undefined)[];
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
  deleteMany(keys: readonly string[], options?: DeleteManyOptions): Promise<void>;
  /** Makes every object put with deferSync durable. */
  sync(options?: { signal?: AbortSignal }): Promise<void>;
  /** Whether the bucket has Object Lock enabled (a local directory never has). */
  objectLock(options?: { signal?: AbortSignal }): Promise<ObjectLockState>;
  /**
   * Sets the retention of the object's current version (or of `versionId`). It may only be
   * lengthened, in the same mode: a shorter one is refused by the server ('auth').
   */
  retain(key: string, retention: Retention, options?: { signal?: AbortSignal; versionId?: string }): Promise<void>;
  /**
   * Every version and delete marker of every key that starts with `prefix`, in key order (a
   * store without versions lists its objects, each the latest).
   */
  listVersions(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectVersion>;
}
