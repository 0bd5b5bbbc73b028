// WritebackPacer: a long writer's early writebacks start every `every` bytes, one at a time, and
// a failed one is not lost: the writer hears of it when it settles.

import { closeSync, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { WritebackPacer } from '../../src/util/durable-file.js';

describe('WritebackPacer', () => {
  it('syncs nothing below its threshold, starts a sync once past it, and reports a failed one when settled', async () => {
    // A descriptor that is closed: any fdatasync on it fails (EBADF), which shows whether one ran.
    const dir = await mkdtemp(join(tmpdir(), 'cdp-pacer-'));
    try {
      const fd = openSync(join(dir, 'f'), 'w');
      closeSync(fd);
      const pacer = new WritebackPacer(fd, 100);
      pacer.wrote(60);
      await expect(pacer.settle()).resolves.toBeUndefined(); // below the threshold: no sync
      pacer.wrote(60);
      await expect(pacer.settle()).rejects.toMatchObject({ code: 'EBADF' });
      // After a failure it starts no more; the failure stays.
      pacer.wrote(1000);
      await expect(pacer.settle()).rejects.toMatchObject({ code: 'EBADF' });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
