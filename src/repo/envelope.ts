// The envelope every metadata object (config, delta, checkpoint) is stored in:
//
//   offset 0   8 bytes   magic, ASCII (e.g. "CDPS3DLT")
//   offset 8   2 bytes   format version, u16 little-endian
//   offset 10  n bytes   body: one msgpack map
//   last 32    bytes     SHA-256 of everything before it
//
// The trailing digest catches truncation and bit rot before any field is trusted.

import { createHash } from 'node:crypto';
import { Packr } from 'msgpackr';
import { FormatError } from '../errors.js';

const HEADER = 10;
const TRAILER = 32;

// Plain maps and arrays only (no msgpackr records extension), so any msgpack reader can read them.
// Integers from 2^32 up are written as int64 (see wideIntegers); int64 and uint64 read as numbers.
const packr = new Packr({ useRecords: false, moreTypes: false, mapsAsObjects: true, variableMapSize: true, int64AsType: 'number' });

/** The repository format this cdp-s3 writes and reads (config, chain, records: docs/FORMAT.md). */
export const FORMAT_VERSION = 6;

/**
 * msgpackr writes integers of 2^32 and more (volume sizes, millisecond times) as float64, which
 * strict decoders in other languages refuse for integer fields. As BigInt they are written as
 * int64 (0xd3), so every integer in a cdp-s3 object is a msgpack integer: the smallest of
 * fixint / uint8 / uint16 / uint32 below 2^32, int64 from there (docs/FORMAT.md, "Envelope").
 */
function wideIntegers(value: unknown): unknown {
  if (typeof value === 'number') {
    if (Number.isInteger(value) && value >= 2 ** 32) {
      if (!Number.isSafeInteger(value)) throw new RangeError(`integer ${value} is beyond 2^53 and cannot be stored exactly`);
      return BigInt(value);
    }
    return value;
  }
  if (value instanceof Uint8Array || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(wideIntegers);
  const out: Record<string, unknown> = {};
  for (const [key, field] of Object.entries(value)) if (field !== undefined) out[key] = wideIntegers(field);
  return out;
}

export interface EnvelopeKind {
  /** Exactly 8 ASCII characters. */
  magic: string;
  version: number;
  /** Names the object in error messages, e.g. "delta 0000000000000007". */
  what: string;
}

export function sealEnvelope(kind: EnvelopeKind, body: Record<string, unknown>): Uint8Array {
  const packed = packr.pack(wideIntegers(body));
  const out = new Uint8Array(HEADER + packed.length + TRAILER);
  out.set(Buffer.from(kind.magic, 'latin1'), 0);
  new DataView(out.buffer).setUint16(8, kind.version, true);
  out.set(packed, HEADER);
  out.set(createHash('sha256').update(out.subarray(0, HEADER + packed.length)).digest(), HEADER + packed.length);
  return out;
}

/** Checks magic, version and digest, and returns the decoded body map. */
export function openEnvelope(kind: EnvelopeKind, bytes: Uint8Array): Record<string, unknown> {
  if (bytes.length < HEADER + TRAILER + 1) {
    throw new FormatError('FORMAT_BAD_LENGTH', kind.what, `only ${bytes.length} bytes: truncated or not a cdp-s3 object`);
  }
  const magic = Buffer.from(bytes.subarray(0, 8)).toString('latin1');
  if (magic !== kind.magic) {
    throw new FormatError('FORMAT_BAD_MAGIC', kind.what, `wrong magic ${JSON.stringify(magic)}, expected "${kind.magic}"`);
  }
  const version = new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint16(8, true);
  if (version !== kind.version) {
    throw new FormatError(
      'FORMAT_UNSUPPORTED_VERSION',
      kind.what,
      `format version ${version} is not supported (this cdp-s3 reads version ${kind.version}); use a cdp-s3 that does`,
    );
  }
  const end = bytes.length - TRAILER;
  const actual = createHash('sha256').update(bytes.subarray(0, end)).digest();
  if (!actual.equals(bytes.subarray(end))) {
    throw new FormatError('FORMAT_CORRUPT', kind.what, 'checksum mismatch: the object is corrupt or truncated');
  }
  let body: unknown;
  try {
    body = packr.unpack(bytes.subarray(HEADER, end));
  } catch (error) {
    throw new FormatError('FORMAT_CORRUPT', kind.what, `body is not valid msgpack (${(error as Error).message})`, { cause: error });
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new FormatError('FORMAT_CORRUPT', kind.what, 'body is not a map');
  }
  return body as Record<string, unknown>;
}

/** Typed field readers for decoded bodies: each throws FORMAT_CORRUPT naming the field. */
export class FieldReader {
  constructor(
    private readonly what: string,
    private readonly body: Record<string, unknown>,
  ) {}

  private fail(field: string, expected: string): never {
    throw new FormatError('FORMAT_CORRUPT', this.what, `field "${field}" is missing or not ${expected}`);
  }

  has(field: string): boolean {
    return this.body[field] !== undefined;
  }

  /** The field as decoded (a nested map, for its own reader). */
  raw(field: string): unknown {
    return this.body[field];
  }

  integer(field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
    const value = this.body[field];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
      this.fail(field, `an integer from ${min} to ${max}`);
    }
    return value;
  }

  string(field: string): string {
    const value = this.body[field];
    if (typeof value !== 'string') this.fail(field, 'a string');
    return value;
  }

  oneOf<T extends string>(field: string, choices: readonly T[]): T {
    const value = this.body[field];
    if (typeof value !== 'string' || !(choices as readonly string[]).includes(value)) this.fail(field, `one of ${choices.join(', ')}`);
    return value as T;
  }

  bytes(field: string, length?: number): Uint8Array {
    const value = this.body[field];
    if (!(value instanceof Uint8Array)) this.fail(field, 'binary');
    if (length !== undefined && value.length !== length) {
      throw new FormatError('FORMAT_BAD_LENGTH', this.what, `field "${field}" is ${value.length} bytes, expected ${length}`);
    }
    return value;
  }

  integers(field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number[] {
    const value = this.body[field];
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max)) {
      this.fail(field, `a list of integers from ${min} to ${max}`);
    }
    return value as number[];
  }

  strings(field: string): string[] {
    const value = this.body[field];
    if (!Array.isArray(value) || !value.every((v) => typeof v === 'string')) this.fail(field, 'a list of strings');
    return value as string[];
  }
}
