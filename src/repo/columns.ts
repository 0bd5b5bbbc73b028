// Integer columns as msgpack `bin`: little-endian u16, u32 or u64 values back to back. Hosts
// are little-endian (checked when the repository layer loads), so u16/u32 columns are views.

import { FormatError } from '../errors.js';

export function u16Bytes(values: Uint16Array): Uint8Array {
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

export function u32Bytes(values: Uint32Array): Uint8Array {
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

/** u64 values (safe integers) as 8 bytes each. */
export function u64Bytes(values: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(values.length * 8);
  const view = new DataView(out.buffer);
  for (let i = 0; i < values.length; i++) view.setBigUint64(i * 8, BigInt(values[i]!), true);
  return out;
}

/** A copy (aligned and owned: a decoded `bin` may be a view into the whole object). */
export function u16Column(bytes: Uint8Array, what: string, field: string): Uint16Array {
  if (bytes.length % 2 !== 0) throw new FormatError('FORMAT_BAD_LENGTH', what, `field "${field}" is not a whole number of u16 values`);
  const copy = new Uint8Array(bytes);
  return new Uint16Array(copy.buffer, 0, copy.length / 2);
}

export function u32Column(bytes: Uint8Array, what: string, field: string): Uint32Array {
  if (bytes.length % 4 !== 0) throw new FormatError('FORMAT_BAD_LENGTH', what, `field "${field}" is not a whole number of u32 values`);
  const copy = new Uint8Array(bytes);
  return new Uint32Array(copy.buffer, 0, copy.length / 4);
}

export function u64Column(bytes: Uint8Array, what: string, field: string): number[] {
  if (bytes.length % 8 !== 0) throw new FormatError('FORMAT_BAD_LENGTH', what, `field "${field}" is not a whole number of u64 values`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const out: number[] = new Array(bytes.length / 8);
  for (let i = 0; i < out.length; i++) {
    const value = view.getBigUint64(i * 8, true);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new FormatError('FORMAT_CORRUPT', what, `field "${field}" holds ${value}, beyond 2^53`);
    out[i] = Number(value);
  }
  return out;
}
