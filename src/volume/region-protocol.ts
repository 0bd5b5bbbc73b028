// Messages between RegionPool (main thread) and region-worker (worker threads). Buffers travel
// by transfer, not copy, and go back and forth so steady-state work allocates nothing.

/**
 * An expected digest no region has: a read with it always yields the bytes (a region to be
 * stored whatever it holds).
 */
export const NEVER_SAME: Buffer = Buffer.alloc(32, 0xff);

export interface ReadRequest {
  type: 'read';
  id: number;
  fd: number;
  offset: number;
  length: number;
  /** Digest the region is expected to have; null when it is expected to be all zeros. */
  expected: Uint8Array | null;
  /** Where to read to (at least `length` bytes); it comes back in the reply. */
  buffer: ArrayBuffer;
}

export interface VerifySlice {
  /** Offset of the slice within the request's bytes. */
  at: number;
  length: number;
  expected: Uint8Array;
  /** (fd, position) pairs to write the slice to once it verifies; may be empty. */
  writes: Array<[number, number]>;
  /** The slice carries its own SHA-256 in its first 32 bytes, of the bytes after them (a patch); `expected` is unused. */
  selfChecked?: boolean;
}

export interface VerifyWriteRequest {
  type: 'verify-write';
  id: number;
  /** The whole buffer is transferred; it comes back in the reply. */
  bytes: Uint8Array;
  slices: VerifySlice[];
}

/** Zero-check and hash bytes the main thread has (a region protect read at its seal). */
export interface DigestRequest {
  type: 'digest';
  id: number;
  /** The whole buffer is transferred; it comes back in the reply. */
  bytes: Uint8Array;
}

export type PoolRequest = ReadRequest | VerifyWriteRequest | DigestRequest;

export type PoolReply =
  | { id: number; status: 'same'; buffer: ArrayBuffer }
  | { id: number; status: 'zero'; buffer: ArrayBuffer }
  | { id: number; status: 'changed'; digest: Uint8Array; buffer: ArrayBuffer }
  /** Verified slices were written; `mismatches` lists the others (nothing of them was written). */
  | { id: number; status: 'verified'; bytes: Uint8Array; mismatches: Array<{ slice: number; digest: Uint8Array }> }
  /** The bytes are all zeros (no digest), or their SHA-256. */
  | { id: number; status: 'digested'; bytes: Uint8Array; digest: Uint8Array | undefined }
  | { id: number; status: 'error'; message: string; code: string | undefined; buffer: ArrayBuffer | undefined };
