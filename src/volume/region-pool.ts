// RegionPool: a fixed set of worker threads (one per core by default) that read and hash
// regions of the primary volume, and verify and write regions of a restore target. The main
// thread keeps the orchestration (packing, uploads, the store); SHA-256 runs in parallel.
// Region buffers are recycled between the threads, so steady-state work allocates nothing.

import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { CdpError } from '../errors.js';
import type { PoolReply, PoolRequest, VerifySlice } from './region-protocol.js';

export type { VerifySlice } from './region-protocol.js';

export type ReadResult =
  | { status: 'same' }
  | { status: 'zero' }
  /** `bytes` is a pooled buffer: hand it back with release() once done with it. */
  | { status: 'changed'; digest: Uint8Array; bytes: Uint8Array };

export interface VerifyResult {
  /** The bytes passed in, back from the worker. */
  bytes: Uint8Array;
  /** Slices whose digest did not match (nothing of them was written). */
  mismatches: Array<{ slice: number; digest: Uint8Array }>;
}

/** A read or write in a worker failed; `code` is the errno name (ENOSPC, EIO, ...). */
export class RegionIoError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

/**
 * The worker's compiled file. Under vitest this module runs from src/*.ts, while workers need
 * JavaScript: use the build in dist/ (npm test builds first).
 */
function workerUrl(): URL {
  const here = import.meta.url;
  if (here.endsWith('.ts')) {
    return new URL(here.replace(/\/src\/volume\/region-pool\.ts$/, '/dist/src/volume/region-worker.js'));
  }
  return new URL('./region-worker.js', here);
}

interface Pending {
  resolve: (reply: Exclude<PoolReply, { status: 'error' }>) => void;
  reject: (error: Error) => void;
}

/** Idle buffers kept per size; more are left to the garbage collector. */
const MAX_IDLE_BUFFERS = 64;

export class RegionPool {
  private readonly workers: Worker[];
  private readonly busy: number[];
  private readonly pending = new Map<number, Pending>();
  private readonly idle = new Map<number, ArrayBuffer[]>();
  private nextId = 1;
  private closing = false;
  private failedWith: Error | undefined;

  /**
   * `identity`: the repository's identity key (Repository.identity) when it is encrypted: the
   * threads then compute keyed region digests (model/regions.ts identityHash).
   */
  constructor(size = availableParallelism(), identity?: Uint8Array) {
    const url = workerUrl();
    this.workers = Array.from({ length: Math.max(1, size) }, (_, index) => {
      const worker = new Worker(fileURLToPath(url), { workerData: { identity } });
      worker.on('message', (reply: PoolReply) => this.settle(index, reply));
      worker.on('error', (error) => this.fail(error));
      // A worker that exits on its own (not by close()) would leave its jobs waiting forever.
      worker.on('exit', (code) => {
        if (!this.closing) this.fail(new Error(`it exited with code ${code}`));
      });
      return worker;
    });
    this.busy = this.workers.map(() => 0);
  }

  get size(): number {
    return this.workers.length;
  }

  /** Why the threads failed, once one has (they are gone for good then: every job fails with it). */
  get failure(): Error | undefined {
    return this.failedWith;
  }

  /** Reads `length` bytes at `offset` of `fd`, and compares them with `expected` (null: zeros). */
  async read(job: { fd: number; offset: number; length: number; expected: Uint8Array | null }): Promise<ReadResult> {
    const buffer = this.take(job.length);
    const reply = await this.submit({ type: 'read', id: 0, ...job, buffer }, [buffer]);
    if (reply.status === 'changed') return { status: 'changed', digest: reply.digest, bytes: new Uint8Array(reply.buffer, 0, job.length) };
    if (reply.status !== 'same' && reply.status !== 'zero') throw new Error(`unexpected reply ${reply.status}`);
    this.giveBack(reply.buffer);
    return { status: reply.status };
  }

  /** Returns a buffer from a 'changed' read for reuse. */
  release(bytes: Uint8Array): void {
    this.giveBack(bytes.buffer as ArrayBuffer);
  }

  /**
   * Verifies each slice of `bytes` against its digest on a worker and writes the ones that
   * match. `bytes` goes to the worker by transfer: with `owned`, the caller owns the whole
   * ArrayBuffer under it and gets it back in the result; otherwise a view of a larger buffer is
   * copied first (it may be shared, e.g. Node's Buffer pool).
   */
  async verify(bytes: Uint8Array, slices: VerifySlice[], owned = false): Promise<VerifyResult> {
    const whole = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
    const own = whole || owned ? bytes : new Uint8Array(bytes); // a copy (Buffer.slice would be a view)
    const reply = await this.submit({ type: 'verify-write', id: 0, bytes: own, slices }, [own.buffer as ArrayBuffer]);
    if (reply.status !== 'verified') throw new Error(`unexpected reply ${reply.status}`);
    return { bytes: reply.bytes, mismatches: reply.mismatches };
  }

  /**
   * Zero-checks and hashes `bytes` on a worker: undefined digest for all zeros. With `owned`
   * the caller owns the whole ArrayBuffer under `bytes`, which goes to the worker and comes back
   * (the result's `bytes`: use that, the one passed in is detached); otherwise a copy goes.
   */
  async digest(bytes: Uint8Array, owned: boolean): Promise<{ digest: Uint8Array | undefined; bytes: Uint8Array }> {
    const own = owned ? bytes : new Uint8Array(bytes);
    const reply = await this.submit({ type: 'digest', id: 0, bytes: own }, [own.buffer as ArrayBuffer]);
    if (reply.status !== 'digested') throw new Error(`unexpected reply ${reply.status}`);
    return { digest: reply.digest, bytes: reply.bytes };
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private take(length: number): ArrayBuffer {
    const size = 2 ** Math.ceil(Math.log2(Math.max(length, 4096)));
    return this.idle.get(size)?.pop() ?? new ArrayBuffer(size);
  }

  private giveBack(buffer: ArrayBuffer): void {
    let list = this.idle.get(buffer.byteLength);
    if (list === undefined) this.idle.set(buffer.byteLength, (list = []));
    if (list.length < MAX_IDLE_BUFFERS) list.push(buffer);
  }

  private submit(request: PoolRequest, transfer: ArrayBuffer[]): Promise<Exclude<PoolReply, { status: 'error' }>> {
    if (this.failedWith !== undefined) return Promise.reject(this.failedWith);
    const id = this.nextId++;
    request.id = id;
    // The least busy worker takes the job.
    let index = 0;
    for (let i = 1; i < this.busy.length; i++) if (this.busy[i]! < this.busy[index]!) index = i;
    this.busy[index]!++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.workers[index]!.postMessage(request, transfer);
    });
  }

  private settle(index: number, reply: PoolReply): void {
    const waiter = this.pending.get(reply.id);
    if (waiter === undefined) return;
    this.pending.delete(reply.id);
    this.busy[index]!--;
    if (reply.status === 'error') {
      if (reply.buffer !== undefined) this.giveBack(reply.buffer);
      waiter.reject(new RegionIoError(reply.message, reply.code));
    } else waiter.resolve(reply);
  }

  private fail(error: Error): void {
    if (this.failedWith !== undefined) return; // the first failure says why
    this.failedWith = new CdpError('SOURCE', `a region worker failed: ${error.message}`, { cause: error });
    for (const waiter of this.pending.values()) waiter.reject(this.failedWith);
    this.pending.clear();
  }
}
