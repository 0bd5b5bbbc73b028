// Worker thread of the RegionPool: reads, zero-checks, hashes, verifies and writes regions, so
// SHA-256 (the bound on backup, scan and restore) runs on every core. File descriptors are
// process-wide, so jobs carry the main thread's fd numbers.

import { createHash } from 'node:crypto';
import { readSync, writeSync } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { kernels } from '../kernels/index.js';
import type { PoolReply, PoolRequest } from './region-protocol.js';

const k = kernels();

function readFully(fd: number, buffer: Uint8Array, position: number): void {
  let done = 0;
  while (done < buffer.length) {
    const n = readSync(fd, buffer, done, buffer.length - done, position + done);
    if (n === 0) throw Object.assign(new Error(`unexpected end of volume at byte ${position + done}`), { code: 'EOF' });
    done += n;
  }
}

function writeFully(fd: number, buffer: Uint8Array, position: number): void {
  let done = 0;
  while (done < buffer.length) done += writeSync(fd, buffer, done, buffer.length - done, position + done);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(b);
}

function handle(job: PoolRequest): { reply: PoolReply; transfer: ArrayBuffer[] } {
  if (job.type === 'read') {
    const bytes = Buffer.allocUnsafeSlow(job.length);
    readFully(job.fd, bytes, job.offset);
    if (k.isZero(bytes)) return { reply: { id: job.id, status: job.expected === null ? 'same' : 'zero' }, transfer: [] };
    const digest = createHash('sha256').update(bytes).digest();
    if (job.expected !== null && sameBytes(job.expected, digest)) return { reply: { id: job.id, status: 'same' }, transfer: [] };
    const reply: PoolReply = { id: job.id, status: 'changed', digest, bytes: job.wantBytes ? bytes : undefined };
    return { reply, transfer: job.wantBytes ? [bytes.buffer as ArrayBuffer] : [] };
  }
  // verify-write: the bytes must hash to the expected digest before they are written.
  const digest = createHash('sha256').update(job.bytes).digest();
  if (!sameBytes(job.expected, digest)) return { reply: { id: job.id, status: 'mismatch', digest }, transfer: [] };
  for (const [fd, position] of job.writes) writeFully(fd, job.bytes, position);
  const back = job.returnBytes ? job.bytes : undefined;
  return { reply: { id: job.id, status: 'written', bytes: back }, transfer: back === undefined ? [] : [back.buffer as ArrayBuffer] };
}

parentPort!.on('message', (job: PoolRequest) => {
  try {
    const { reply, transfer } = handle(job);
    parentPort!.postMessage(reply, transfer);
  } catch (error) {
    const e = error as NodeJS.ErrnoException;
    parentPort!.postMessage({ id: job.id, status: 'error', message: e.message, code: e.code } satisfies PoolReply);
  }
});
