// What a running protect reports about itself for `cdp-s3 status`: the reports land in the order
// they are made, and after a clean stop the last one says "stopped".

import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { PROTECT_STATUS_KIND, protect } from '../../src/core/protect.js';
import { status } from '../../src/core/status.js';
import { openEnvelope } from '../../src/repo/envelope.js';
import { type ProtectStatusRecord, decodeProtectStatus } from '../../src/repo/protect-status.js';
import { openStore } from '../../src/store/open.js';
import { FaultStore } from '../helpers/fault-store.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { waitUntil } from '../helpers/wait.js';

const REGION = 64 * 1024;
const REGIONS = 32;
const fixture = useS3Fixture('protectstatus', ['protectstatus']);
let counter = 0;

async function makeFixture(kind: 'fs' | 's3') {
  const n = ++counter;
  const work = join(fixture.dir, `${kind}-${n}`);
  await mkdir(work, { recursive: true });
  const store = openStore(kind === 'fs' ? join(work, 'repo') : `s3://protectstatus/r-${n}`);
  const source = join(work, 'disk.img');
  await writeFile(source, makeImage({ size: REGIONS * REGION, regionSize: REGION, seed: n, zero: 0, repeated: 0 }));
  await init({ store, from: source, regionSize: REGION });
  await backup({ store, source, workers: 2 });
  return { work, store, source, drl: join(work, 'disk.drl') };
}

const reportSays = (body: Uint8Array): boolean => (JSON.parse(String(openEnvelope(PROTECT_STATUS_KIND, body)['json'])) as { running: boolean }).running;

for (const kind of ['fs', 's3'] as const) {
  describe(`protect status reports (${kind} store)`, () => {
    it('a tick\'s "running" report still in flight when the drain reports "stopped" never lands after it', async () => {
      const f = await makeFixture(kind);
      let holdRunning = false;
      let heldRunning!: () => void;
      const runningHeld = new Promise<void>((resolve) => (heldRunning = resolve));
      let stoppedLanded!: () => void;
      const stoppedReport = new Promise<void>((resolve) => (stoppedLanded = resolve));
      const landed: boolean[] = [];
      const store = new FaultStore(f.store, {
        beforePut: async (key, body, options) => {
          if (!key.startsWith('status/')) return;
          if (!reportSays(body)) {
            // The stop's report: let it land, then release whatever "running" report was held.
            await f.store.put(key, body);
            landed.push(false);
            stoppedLanded();
            throw new Error('landed already (the test put it)');
          }
          if (!holdRunning) return;
          heldRunning();
          // Held until the "stopped" report has landed, or until protect cancels it.
          await new Promise<void>((resolve, reject) => {
            void stoppedReport.then(resolve);
            options?.signal?.addEventListener('abort', () => reject(new Error('cancelled')), { once: true });
          });
          landed.push(true);
        },
      });
      let tick!: () => void;
      const handle = await protect({
        store,
        source: f.source,
        drl: f.drl,
        listen: { host: '127.0.0.1', port: 0 },
        intervalMs: 1000,
        schedule: (run) => {
          tick = run;
          return () => {};
        },
      });
      await handle.volume.write(3 * REGION, Buffer.alloc(REGION, 3), false);
      holdRunning = true;
      tick(); // ships the write, then reports "running": held in flight
      await runningHeld;
      await handle.stop();
      await stoppedReport;
      expect(landed.at(-1)).toBe(false);
      const { protects } = await status({ store: f.store });
      expect(protects).toEqual([expect.objectContaining({ running: false, seq: 2, unshippedRegions: 0 })]);
    });

    it('status keeps being reported every tick while a drain is stalled, with the growing lag', async () => {
      const f = await makeFixture(kind);
      let now = Date.now();
      let failFirst = true;
      let stalled = true;
      let unstall!: () => void;
      const unstalled = new Promise<void>((resolve) => (unstall = resolve));
      let drainStalled!: () => void;
      const drainReached = new Promise<void>((resolve) => (drainStalled = resolve));
      const reports: ProtectStatusRecord[] = [];
      const store = new FaultStore(f.store, {
        beforePut: async (key) => {
          if (key.startsWith('locks/') || key.startsWith('status/')) return;
          if (failFirst) {
            failFirst = false;
            throw new Error('connect ECONNREFUSED (injected)'); // the direct shipment fails: the outage begins
          }
          if (!stalled) return;
          drainStalled();
          await unstalled; // the drain's put hangs
          throw new Error('connect ETIMEDOUT (injected)');
        },
        afterPut: (key, body) => {
          if (key.startsWith('status/')) reports.push(decodeProtectStatus(body));
        },
      });
      let tick!: () => void;
      const handle = await protect({
        store,
        source: f.source,
        drl: f.drl,
        clock: () => now,
        listen: { host: '127.0.0.1', port: 0 },
        intervalMs: 1000,
        schedule: (run) => {
          tick = run;
          return () => {};
        },
      });
      const firstWrite = now;
      await handle.volume.write(3 * REGION, Buffer.alloc(REGION, 3), false);
      const reported = (lagMs: number): Promise<void> => waitUntil(() => reports.some((r) => r.running && r.lagMs === lagMs), `a report with lag ${lagMs} ms`);
      now += 1000;
      tick(); // the shipment fails; its point is spooled
      await reported(1000);
      await waitUntil(() => handle.volume.status().spooledPoints === 1, 'the failed point spooled');
      now += 1000;
      tick(); // the drain starts and hangs
      await drainReached;
      for (let t = 3; t <= 5; t++) {
        now += 1000;
        await handle.volume.write(t * REGION, Buffer.alloc(REGION, t), false);
        tick();
        await reported(now - firstWrite);
      }
      const lags = reports.filter((r) => r.running).map((r) => r.lagMs);
      expect(lags).toEqual([...lags].sort((a, b) => a - b));
      expect(reports.at(-1)).toMatchObject({ running: true, seq: 1, lagMs: 5000 }); // made at the tick, before its seal
      await waitUntil(() => handle.volume.status().spooledPoints === 4, 'every tick spooled');
      stalled = false;
      unstall();
      await handle.stop();
      expect(reports.at(-1)).toMatchObject({ running: false, seq: 5, lagMs: 0 });
    });

    it('reports do not pile up behind a status put that hangs: one waits, reading the status when it goes', async () => {
      const f = await makeFixture(kind);
      let hold = false;
      let held!: () => void;
      const statusHeld = new Promise<void>((resolve) => (held = resolve));
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      const reports: ProtectStatusRecord[] = [];
      let statusPuts = 0;
      const store = new FaultStore(f.store, {
        beforePut: async (key) => {
          if (!key.startsWith('status/')) return;
          statusPuts++;
          if (!hold) return;
          hold = false;
          held();
          await released;
        },
        afterPut: (key, body) => {
          if (key.startsWith('status/')) reports.push(decodeProtectStatus(body));
        },
      });
      let tick!: () => void;
      const handle = await protect({
        store,
        source: f.source,
        drl: f.drl,
        listen: { host: '127.0.0.1', port: 0 },
        intervalMs: 1000,
        schedule: (run) => {
          tick = run;
          return () => {};
        },
      });
      const before = statusPuts;
      hold = true;
      tick();
      await statusHeld;
      for (let i = 0; i < 5; i++) {
        await handle.volume.write(i * REGION, Buffer.alloc(REGION, i + 1), false);
        tick();
        await handle.volume.sealAndShip(); // as the tick's own shipment does
      }
      release();
      await waitUntil(() => reports.some((r) => r.seq === 6), 'the waiting report, with the newest point');
      expect(statusPuts - before).toBe(2); // the held one and one more, not one per tick
      await handle.stop();
    });

    it('protect returns (serving) while its first status report is still being put: a slow store does not delay the start', async () => {
      const f = await makeFixture(kind);
      let release!: () => void;
      const released = new Promise<void>((resolve) => (release = resolve));
      let held = false;
      const store = new FaultStore(f.store, {
        beforePut: async (key) => {
          if (!key.startsWith('status/') || held) return;
          held = true;
          await released; // the first report hangs
        },
      });
      const handle = await protect({ store, source: f.source, drl: f.drl, listen: { host: '127.0.0.1', port: 0 }, intervalMs: 1000, schedule: () => () => {} });
      expect(held).toBe(true);
      expect(handle.port).toBeGreaterThan(0);
      release();
      await handle.stop();
      const { protects } = await status({ store: f.store });
      expect(protects).toEqual([expect.objectContaining({ running: false })]);
    });
  });
}
