// RegionPool: a fixed set of worker threads (one per core by default) that read and hash
// regions of the primary volume, and verify and write regions of a restore target. The main
// thread keeps the orchestration (packing, uploads, the store); SHA-256 runs in parallel.

import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { CdpError } from '../errors.js';
import type { PoolReply, PoolRequest, ReadRequest, VerifyWriteRequest } from './region-protocol.js';

export type ReadResult =
  | { status: 'same' }
  | { status: 'zero' }
  | { status: 'changed'; digest: Uint8Array; bytes: Uint8Array | undefined };

export type VerifyWriteResult = { status: 'mismatch'; digest: Uint8Array } | { status: 'written'; bytes: Uint8Array | undefined };

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

/** A read or write in a worker failed; `code` is the errno name (ENOSPC, EIO, ...). */
export class RegionIoError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

interface Pending {
  resolve: (reply: PoolReply) => void;
  reject: (error: Error) => void;
}

export class RegionPool {
  private readonly workers: Worker[];
  private readonly busy: number[];
  private readonly pending = new Map<number, Pending>();
  private readonly owner = new Map<number, number>();
  private nextId = 1;
  private failure: Error | undefined;

  constructor(size = availableParallelism()) {
    const url = workerUrl();
    this.workers = Array.from({ length: Math.max(1, size) }, (_, index) => {
      const worker = new Worker(fileURLToPath(url));
      worker.on('message', (reply: PoolReply) => this.settle(index, reply));
      worker.on('error', (error) => this.fail(error));
      return worker;
    });
    this.busy = this.workers.map(() => 0);
  }

  get size(): number {
    return this.workers.length;
  }

  read(job: Omit<ReadRequest, 'type' | 'id'>): Promise<ReadResult> {
    return this.submit({ type: 'read', id: 0, ...job }, []) as Promise<ReadResult>;
  }

  /** Hashes `bytes` (transferred to the worker) and writes them where asked if they match. */
  verifyWrite(job: Omit<VerifyWriteRequest, 'type' | 'id'>): Promise<VerifyWriteResult> {
    // Posting a view clones its whole ArrayBuffer; give the worker exactly the region instead.
    const whole = job.bytes.byteOffset === 0 && job.bytes.byteLength === job.bytes.buffer.byteLength;
    const bytes = whole ? job.bytes : job.bytes.slice();
    return this.submit({ type: 'verify-write', id: 0, ...job, bytes }, [bytes.buffer as ArrayBuffer]) as Promise<VerifyWriteResult>;
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }

  private submit(request: PoolRequest, transfer: ArrayBuffer[]): Promise<Exclude<PoolReply, { status: 'error' }>> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const id = this.nextId++;
    request.id = id;
    // The least busy worker takes the job.
    let index = 0;
    for (let i = 1; i < this.busy.length; i++) if (this.busy[i]! < this.busy[index]!) index = i;
    this.busy[index]!++;
    this.owner.set(id, index);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (reply: PoolReply) => void, reject });
      this.workers[index]!.postMessage(request, transfer);
    });
  }

  private settle(index: number, reply: PoolReply): void {
    const waiter = this.pending.get(reply.id);
    if (waiter === undefined) return;
    this.pending.delete(reply.id);
    this.owner.delete(reply.id);
    this.busy[index]!--;
    if (reply.status === 'error') waiter.reject(new RegionIoError(reply.message, reply.code));
    else waiter.resolve(reply);
  }

  private fail(error: Error): void {
    this.failure = new CdpError('SOURCE', `a region worker failed: ${error.message}`, { cause: error });
    for (const waiter of this.pending.values()) waiter.reject(this.failure);
    this.pending.clear();
  }
}
