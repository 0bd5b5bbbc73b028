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
import { openStore } from '../../src/store/open.js';
import { FaultStore } from '../helpers/fault-store.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

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
  });
}
