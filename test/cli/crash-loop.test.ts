// The crash loop of `npm run bench -- crash`, short: real `cdp-s3 backup` and `cdp-s3 protect`
// processes SIGKILLed at seeded random moments (the moment only chooses where the kill lands;
// every outcome must pass), against a local directory and s3rver. After each completed backup
// every committed point in time restores bit-exact and verify --read-data is clean; after each
// protect kill every write qemu-io saw acknowledged is in the volume, and after a restart on
// the same DRL and a SIGTERM drain the newest point in time restores bit-exact to the volume.

import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { backupCrashLoop, type CrashLoopOptions, protectCrashLoop } from '../../bench/crash.js';
import { CLI_ENTRY } from '../helpers/cli.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const BUCKET = 'crashloop';
const fixture = useS3Fixture('crashloop', [BUCKET]);
const run = promisify(execFile);
const qemuIo = Promise.all(['qemu-io', 'stdbuf'].map((tool) => run('which', [tool]).then(() => true, () => false))).then((all) => all.every(Boolean));

function options(kind: 'fs' | 's3', name: string, trials: number, seed: number): CrashLoopOptions {
  const work = join(fixture.dir, `${name}-${kind}`);
  return {
    cli: CLI_ENTRY,
    work,
    repo: kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/${name}`,
    store: kind,
    trials,
    seed,
    size: 4 * 1024 * 1024,
    maxAckedWrites: 120,
  };
}

for (const kind of ['fs', 's3'] as const) {
  // Three trials of each in all: two on the local store, one on s3rver.
  const trials = kind === 'fs' ? 2 : 1;
  describe(`crash loop (${kind} store)`, () => {
    it(`backup SIGKILLed at a seeded random moment, then one that completes (${trials}×): every committed point in time restores bit-exact, verify clean`, async () => {
      const report = await backupCrashLoop(options(kind, 'backup', trials, kind === 'fs' ? 11 : 21));
      expect(report.failures).toEqual([]);
      expect(report.losses).toBe(0);
      expect(report.trials).toBe(trials);
      // Trial t checks at least the base and t completed backups (a killed one may add its own).
      expect(report.pointsChecked).toBeGreaterThanOrEqual(((trials + 1) * (trials + 2)) / 2 - 1);
    });

    it(`protect SIGKILLed at a seeded random acknowledged write, restarted on its DRL and drained (${trials}×): no acknowledged write lost`, async (ctx) => {
      if (!(await qemuIo)) return ctx.skip('qemu-io or stdbuf missing (apt-get install qemu-utils coreutils)');
      const report = await protectCrashLoop(options(kind, 'protect', trials, kind === 'fs' ? 12 : 22));
      expect(report.failures).toEqual([]);
      expect(report.losses).toBe(0);
      expect(report.trials).toBe(trials);
      expect(report.kills).toBeGreaterThanOrEqual(trials); // and some during recovery
      expect(report.pointsChecked).toBe(trials);
    });
  });
}
