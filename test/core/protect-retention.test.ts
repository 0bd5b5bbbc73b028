// protect --keep-* --prune-every: the running protect thins its own history on a schedule
// (forget, then prune with a grace), while it keeps serving and shipping; kept points restore.

import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { DeltaCommitter, HEAD_MAX_AGE_MS } from '../../src/core/delta-committer.js';
import { log } from '../../src/core/log.js';
import { Repository } from '../../src/repo/repository.js';
import { readWriterTrust } from '../../src/repo/trust.js';
import { protect } from '../../src/core/protect.js';
import { REGION, sha, useProtectFixture } from '../helpers/protect-fixture.js';

const { make, restoreBytes } = useProtectFixture('retention');
const HOUR = 3_600_000;

describe.each(['fs', 's3'] as const)('protect with a retention policy (%s store)', (kind) => {
  it('forgets by the policy and prunes after the grace, between shipments; the kept points restore, the newest always', async () => {
    const f = await make(kind);
    let now = Date.UTC(2026, 11, 7, 12);
    const ticks = new Map<number, () => void>();
    const handle = await protect({
      store: f.store,
      source: f.source,
      drl: f.drl,
      listen: { host: '127.0.0.1', port: 0 },
      intervalMs: 1000,
      retention: { policy: { last: 2 }, everyMs: HOUR, clock: () => now },
      schedule: (run, everyMs) => {
        ticks.set(everyMs, run);
        return () => ticks.delete(everyMs);
      },
    });
    expect(ticks.has(HOUR)).toBe(true); // scheduled
    // Points 1 (the base) … 18: past the first span (16 points), so the removed points' deltas are
    // not needed by the kept ones' covers.
    for (let i = 0; i < 17; i++) {
      await handle.volume.write((3 + (i % 20)) * REGION + 7 * i, Buffer.alloc(9000, 0x10 + i), false);
      await handle.volume.sealAndShip();
    }
    const point17 = await restoreBytes(f.store, f.work, '17');
    // Keep the two newest.
    const thinning = handle.thinNow()!;
    // A write while it runs: acknowledged at once, shipped after the compaction (shipping pauses
    // for it), in the point that follows.
    await handle.volume.write(21 * REGION, Buffer.alloc(REGION, 0x66), false);
    const first = await thinning;
    expect(first.forgot.removed).toEqual([[1, 16]]);
    expect(first.pruned.compaction!.rewritten).toBeGreaterThan(0); // delta 17 holds points 1–17 now
    expect(first.pruned.deleted).toEqual([]); // the grace (24 h) has not passed
    expect(first.pruned.waiting.length).toBeGreaterThan(0);
    expect((await log({ store: f.store })).entries.map((e) => e.seq).slice(0, 2)).toEqual([17, 18]);
    expect(sha(await restoreBytes(f.store, f.work, '17'))).toBe(sha(point17));

    // Shipping goes on; a day later the next run deletes what only the removed points needed.
    await handle.volume.write(20 * REGION, Buffer.alloc(REGION, 0x77), false);
    await handle.volume.sealAndShip();
    now += 25 * HOUR;
    const second = await handle.thinNow()!;
    expect(second.forgot.removed).toEqual([[17, 18]]); // 19 is the write made while the first one ran
    expect(second.pruned.deleted.some((d) => d.key === 'deltas/0000000000000001')).toBe(true);
    expect((await log({ store: f.store })).entries.map((e) => e.seq)).toEqual([19, 20]);
    await expect(restoreBytes(f.store, f.work, '17')).rejects.toThrow(/removed by cdp-s3 forget/);
    const final = await handle.stop();
    expect(final.seq).toBe(20);
    expect(sha(await restoreBytes(f.store, f.work, '20'))).toBe(sha(await readFile(f.source)));
    expect(ticks.has(HOUR)).toBe(false); // stop ends the schedule
  });
});

describe('a long-running writer\'s head', () => {
  it('is opened afresh from the newest point\'s cover once it is an hour old, so it never reads runs only an older point needed', async () => {
    const f = await make('fs');
    const repo = await Repository.open(f.store);
    const index = await repo.index();
    let now = Date.UTC(2026, 11, 7);
    const committer = new DeltaCommitter({ repo, index, head: await repo.view(index, index.latest), trust: await readWriterTrust(f.store), clock: () => now });
    const writer = committer.begin();
    await writer.apply(3, { status: 'zero' });
    await committer.commit(writer, 'host', now);
    const extended = committer.head;
    expect(extended.runs.map((r) => r.block.last)).toEqual([1, 2]); // the base's cover, then the delta folded on
    await committer.refreshHead();
    expect(committer.head).toBe(extended); // younger than an hour: kept
    now += HEAD_MAX_AGE_MS;
    await committer.refreshHead();
    expect(committer.head).not.toBe(extended);
    expect(committer.head.seq).toBe(2);
  });
});
