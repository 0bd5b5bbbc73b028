// Exit codes of the cdp-s3 command (documented in the README). Each error code maps to one.

import type { ErrorCode } from '../errors.js';

export const EXIT = {
  ok: 0,
  /** An unexpected failure: a bug, or an error cdp-s3 does not classify. */
  internal: 1,
  usage: 2,
  /** The repository is missing (not initialized) or already exists. */
  repository: 3,
  /** The source or target cannot be used: missing, unreadable, wrong size, full, exists. */
  volume: 4,
  /** No point in time matches --at. */
  noPointInTime: 5,
  /**
   * The object store failed: unreachable, credentials refused, bucket missing, gave up retrying;
   * or init --object-lock on a store without Object Lock.
   */
  store: 6,
  /** Stored data is damaged: corrupt or missing object, digest mismatch, unknown format. */
  integrity: 7,
  /**
   * Another writer (named in the message) holds the repository lock, or this command lost its
   * lock while it ran. Wait and run again, or, if that writer is gone, use --force-unlock.
   */
  locked: 8,
  /**
   * The repository is encrypted and no password was given (CDP_S3_PASSWORD, --password-file, or a
   * terminal to ask on), the password opens none of its keys, or a key operation was refused.
   */
  password: 9,
  /** scan found discrepancies between primary and secondary (repaired unless --dry-run). */
  discrepancies: 10,
  /** Interrupted (Ctrl-C / SIGTERM); nothing half-done was committed. */
  interrupted: 130,
  /**
   * The reader of standard output went away (EPIPE, e.g. `| head`): the output stopped early.
   * 128 + SIGPIPE, what a shell reports for a command that SIGPIPE ended.
   */
  outputClosed: 141,
} as const;

export function exitCodeFor(code: ErrorCode): number {
  switch (code) {
    case 'USAGE':
    case 'INVALID_ARGUMENT':
      return EXIT.usage;
    case 'REPO_NOT_INITIALIZED':
    case 'REPO_EXISTS':
      return EXIT.repository;
    case 'SOURCE':
    case 'TARGET':
    case 'VOLUME_MISMATCH':
    case 'NOT_FOUND':
      return EXIT.volume;
    case 'NO_POINT_IN_TIME':
      return EXIT.noPointInTime;
    case 'LOCKED':
      return EXIT.locked;
    case 'PASSWORD':
    case 'KEY':
      return EXIT.password;
    case 'ABORTED':
      return EXIT.interrupted;
    case 'OUTPUT_CLOSED':
      return EXIT.outputClosed;
    case 'INTEGRITY':
    case 'FORMAT_BAD_MAGIC':
    case 'FORMAT_UNSUPPORTED_VERSION':
    case 'FORMAT_BAD_LENGTH':
    case 'FORMAT_TRAILING_DATA':
    case 'FORMAT_CORRUPT':
      return EXIT.integrity;
    case 'STORE_NOT_FOUND':
    case 'STORE_EXISTS':
    case 'STORE_RETRYABLE':
    case 'STORE_AUTH':
    case 'STORE_NO_BUCKET':
    case 'STORE_UNREACHABLE':
    case 'STORE_PERMANENT':
    case 'NO_OBJECT_LOCK':
      return EXIT.store;
  }
}
