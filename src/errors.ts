// Typed errors. Every error cdp-s3 raises on purpose is a CdpError with a stable `code` that
// scripts and the CLI's exit-code mapping can rely on; the message is one line that names
// what is wrong and, where there is one, the fix.

export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'USAGE'
  | 'NOT_FOUND'
  | 'ABORTED'
  | 'SOURCE'
  | 'TARGET'
  | 'REPO_NOT_INITIALIZED'
  | 'REPO_EXISTS'
  | 'VOLUME_MISMATCH'
  | StoreErrorCode
  | 'FORMAT_BAD_MAGIC'
  | 'FORMAT_UNSUPPORTED_VERSION'
  | 'FORMAT_BAD_LENGTH'
  | 'FORMAT_TRAILING_DATA'
  | 'FORMAT_CORRUPT'
  | 'INTEGRITY'
  | 'NO_POINT_IN_TIME'
  | 'LOCKED'
  | 'OUTPUT_CLOSED'
  /** An encrypted repository and no password, or one that opens none of its keys. */
  | 'PASSWORD'
  /** A key operation that cannot be done: no key left to open the repository, an unknown key id. */
  | 'KEY'
  /** Object Lock asked of a store that has none (a local directory, a bucket created without it, a server without it). */
  | 'NO_OBJECT_LOCK';

export type StoreErrorKind = 'not-found' | 'exists' | 'retryable' | 'auth' | 'no-bucket' | 'unreachable' | 'permanent';
type StoreErrorCode =
  | 'STORE_NOT_FOUND'
  | 'STORE_EXISTS'
  | 'STORE_RETRYABLE'
  | 'STORE_AUTH'
  | 'STORE_NO_BUCKET'
  | 'STORE_UNREACHABLE'
  | 'STORE_PERMANENT';

export class CdpError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A caller passed a value that breaks a documented precondition. */
export class InvalidArgumentError extends CdpError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('INVALID_ARGUMENT', message, options);
  }
}

export type FormatErrorCode = Extract<ErrorCode, `FORMAT_${string}`>;

/** Stored bytes are not what the format says they must be. `what` names the object kind. */
export class FormatError extends CdpError {
  readonly what: string;

  constructor(code: FormatErrorCode, what: string, message: string, options?: { cause?: unknown }) {
    super(code, `${what}: ${message}`, options);
    this.what = what;
  }
}

/** Wrong command-line or option usage; the message says what to pass instead. */
export class UsageError extends CdpError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('USAGE', message, options);
  }
}

/** The operation was cancelled through its AbortSignal (Ctrl-C in the CLI). */
export class AbortedError extends CdpError {
  constructor(message = 'cancelled', options?: { cause?: unknown }) {
    super('ABORTED', message, options);
  }
}

/**
 * An object store failed. `kind` says how: retryable ones (throttling, 5xx, resets) are retried
 * by the retry wrapper; the rest are final.
 */
export class StoreError extends CdpError {
  readonly kind: StoreErrorKind;
  readonly key: string | undefined;

  constructor(kind: StoreErrorKind, message: string, options?: { cause?: unknown; key?: string }) {
    super(`STORE_${kind.toUpperCase().replace('-', '_')}` as StoreErrorCode, message, options);
    this.kind = kind;
    this.key = options?.key;
  }
}

/** Bytes read back do not match their recorded digest. */
export class IntegrityError extends CdpError {
  readonly expected: string;
  readonly actual: string;

  constructor(what: string, expected: string, actual: string, options?: { cause?: unknown }) {
    super('INTEGRITY', `${what}: digest mismatch (expected ${expected}, got ${actual})`, options);
    this.expected = expected;
    this.actual = actual;
  }
}

/** No point in time matches the request (before the first, in the future, unknown sequence). */
export class NoPointInTimeError extends CdpError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('NO_POINT_IN_TIME', message, options);
  }
}

/** Who holds a repository lock, as far as its lock object says (only `key` when it is unreadable). */
export interface LockHolder {
  /** The lock object's key, e.g. `locks/3f0c…`. */
  key: string;
  host?: string;
  pid?: number;
  /** The command holding it, e.g. `backup`. */
  command?: string;
  /** When it was taken, milliseconds since the epoch. */
  since?: number;
  /** When it expires unless its holder refreshes it, milliseconds since the epoch. */
  expires?: number;
}

/**
 * The repository is locked by another writer, or this writer lost its lock. `holder` names the
 * other writer's lock (undefined when this writer's own lock was lost).
 */
export class LockedError extends CdpError {
  readonly holder: LockHolder | undefined;

  constructor(message: string, holder?: LockHolder, options?: { cause?: unknown }) {
    super('LOCKED', message, options);
    this.holder = holder;
  }
}

/** Throws AbortedError if the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted === true) throw new AbortedError('cancelled', { cause: signal.reason });
}
