// RegionPool's failure handling: a worker that dies takes no job with it into a wait that never ends.

import { once } from 'node:events';
import { open, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RegionPool } from '../../src/volume/region-pool.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-s3-pool-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('RegionPool', () => {
  it('a worker that exits on its own fails the pool: jobs waiting and jobs after it are rejected, not left waiting', async () => {
    const file = join(dir, 'f');
    await writeFile(file, Buffer.alloc(65536, 1));
    const handle = await open(file, 'r');
    const pool = new RegionPool(1);
    try {
      expect((await pool.read({ fd: handle.fd, offset: 0, length: 65536, expected: null })).status).toBe('changed');
      const worker = (pool as unknown as { workers: Worker[] }).workers[0]!;
      const exited = once(worker, 'exit');
      void worker.terminate(); // as if it crashed: not through close()
      await exited;
      await expect(pool.read({ fd: handle.fd, offset: 0, length: 65536, expected: null })).rejects.toMatchObject({ code: 'SOURCE', message: /a region worker failed: it exited with code/ });
      expect(pool.failure).toBeDefined();
    } finally {
      await pool.close();
      await handle.close();
    }
  });
});
