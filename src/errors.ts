// Typed errors. Every error cdp-s3 raises on purpose is a CdpError with a stable `code` that
// scripts and the CLI's exit-code mapping can rely on; the message is one line that names
// what is wrong and, where there is one, the fix.

export type ErrorCode =
  | 'INVALID_ARGUMENT'
  | 'USAGE'
  | 'NOT_FOUND'
  | 'FORMAT_BAD_MAGIC'
  | 'FORMAT_UNSUPPORTED_VERSION'
  | 'FORMAT_BAD_LENGTH'
  | 'FORMAT_TRAILING_DATA'
  | 'FORMAT_CORRUPT'
  | 'INTEGRITY'
  | 'NO_POINT_IN_TIME';

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
