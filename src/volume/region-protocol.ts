// Messages between RegionPool (main thread) and region-worker (worker threads).

export interface ReadRequest {
  type: 'read';
  id: number;
  fd: number;
  offset: number;
  length: number;
  /** Digest the region is expected to have; null when it is expected to be all zeros. */
  expected: Uint8Array | null;
  /** Send the bytes back when they differ from `expected` (they are transferred, not copied). */
  wantBytes: boolean;
}

export interface VerifyWriteRequest {
  type: 'verify-write';
  id: number;
  bytes: Uint8Array;
  expected: Uint8Array;
  /** (fd, position) pairs to write the bytes to once they verify; may be empty. */
  writes: Array<[number, number]>;
  returnBytes: boolean;
}

export type PoolRequest = ReadRequest | VerifyWriteRequest;

export type PoolReply =
  | { id: number; status: 'same' }
  | { id: number; status: 'zero' }
  | { id: number; status: 'changed'; digest: Uint8Array; bytes: Uint8Array | undefined }
  | { id: number; status: 'mismatch'; digest: Uint8Array }
  | { id: number; status: 'written'; bytes: Uint8Array | undefined }
  | { id: number; status: 'error'; message: string; code: string | undefined };
