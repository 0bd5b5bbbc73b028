// Worker thread of the RegionPool: reads, zero-checks, hashes, verifies and writes regions, so
// SHA-256 (the bound on backup, scan and restore) runs on every core. File descriptors are
// process-wide, so jobs carry the main thread's fd numbers.

import { createHash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { identityHash } from '../model/regions.js';
import { kernels } from '../kernels/index.js';
import { PATCH_DIGEST_BYTES } from '../model/patches.js';
import { preadFullySync as readFully, pwriteFullySync as writeFully } from '../util/positional-io.js';
import { NEVER_SAME, type PoolReply, type PoolRequest } from './region-protocol.js';

const k = kernels();
/** The repository's identity key (encrypted repositories): region digests are keyed then. */
const identity = (workerData as { identity?: Uint8Array } | undefined)?.identity;
const regionHash = () => identityHash(identity);

/**
 * A region expected to hold known content is read through this small buffer, which stays in the
 * CPU cache: reading into a cold region-sized buffer and hashing it from there moves every byte
 * through memory twice more than the hash needs (measured: scan of a page-cached image spent a
 * third of its time copying), and an unchanged region's bytes are not needed afterwards.
 */
const STREAM_CHUNK = 128 * 1024;
let streamBuffer: Uint8Array | undefined;

/** 'same' or 'zero' for a region read in chunks, or undefined: it changed (read it whole). */
function streamedCheck(fd: number, offset: number, length: number, expected: Uint8Array): 'same' | 'zero' | undefined {
  const chunk = (streamBuffer ??= new Uint8Array(STREAM_CHUNK));
  const hash = regionHash();
  let zero = true;
  for (let at = 0; at < length; at += chunk.length) {
    const part = chunk.subarray(0, Math.min(chunk.length, length - at));
    readFully(fd, part, offset + at);
    if (zero) zero = k.isZero(part);
    hash.update(part);
  }
  if (zero) return 'zero';
  return hash.digest().equals(expected) ? 'same' : undefined;
}

const zeroDigests = new Map<number, Buffer>();

/** The SHA-256 of `length` zero bytes (a region length: a few distinct ones). */
function zerosDigest(length: number): Buffer {
  let digest = zeroDigests.get(length);
  if (digest === undefined) zeroDigests.set(length, (digest = regionHash().update(new Uint8Array(length)).digest()));
  return digest;
}

function handle(job: PoolRequest): PoolReply {
  if (job.type === 'read') {
    // Most regions a scan or an incremental backup reads are unchanged: check them streamed.
    if (job.expected !== null && !NEVER_SAME.equals(job.expected)) {
      const streamed = streamedCheck(job.fd, job.offset, job.length, job.expected);
      if (streamed !== undefined) return { id: job.id, status: streamed, buffer: job.buffer };
    }
    const bytes = new Uint8Array(job.buffer, 0, job.length);
    readFully(job.fd, bytes, job.offset);
    if (k.isZero(bytes)) return { id: job.id, status: job.expected === null ? 'same' : 'zero', buffer: job.buffer };
    const digest = regionHash().update(bytes).digest();
    if (job.expected !== null && digest.equals(job.expected)) return { id: job.id, status: 'same', buffer: job.buffer };
    return { id: job.id, status: 'changed', digest, buffer: job.buffer };
  }
  if (job.type === 'digest') {
    // Hashed first, then zeros recognised by their digest: the zero test would copy the region
    // into kernel memory up to its first nonzero byte (most of a region a small write touched).
    const digest = regionHash().update(job.bytes).digest();
    return { id: job.id, status: 'digested', bytes: job.bytes, digest: digest.equals(zerosDigest(job.bytes.length)) ? undefined : digest };
  }
  // verify-write: each slice must hash to its expected digest before it is written.
  const mismatches: Array<{ slice: number; digest: Uint8Array }> = [];
  job.slices.forEach((slice, index) => {
    const bytes = job.bytes.subarray(slice.at, slice.at + slice.length);
    // A patch read on its own checks against the digest it carries.
    const digest = (slice.selfChecked === true ? createHash('sha256') : regionHash()).update(slice.selfChecked === true ? bytes.subarray(PATCH_DIGEST_BYTES) : bytes).digest();
    if (!digest.equals(slice.selfChecked === true ? bytes.subarray(0, PATCH_DIGEST_BYTES) : slice.expected)) {
      mismatches.push({ slice: index, digest });
      return;
    }
    for (const [fd, position] of slice.writes) writeFully(fd, bytes, position);
  });
  return { id: job.id, status: 'verified', bytes: job.bytes, mismatches };
}

parentPort!.on('message', (job: PoolRequest) => {
  let reply: PoolReply;
  try {
    reply = handle(job);
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    const buffer = job.type === 'read' ? job.buffer : (job.bytes.buffer as ArrayBuffer);
    reply = { id: job.id, status: 'error', message: e.message, code: e.code, buffer };
  }
  const buffer = 'buffer' in reply ? reply.buffer : reply.status === 'verified' || reply.status === 'digested' ? reply.bytes.buffer : undefined;
  parentPort!.postMessage(reply, buffer === undefined ? [] : [buffer as ArrayBuffer]);
});
