// Bad input for the integrity side: one line on stderr, a documented exit code, and nothing
// committed lost or rewritten.

import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { geometry } from '../../src/model/regions.js';
import { acquireWriterLock } from '../../src/repo/lock.js';
import { Repository } from '../../src/repo/repository.js';
import { openStore } from '../../src/store/open.js';
import { InProcessWriter } from '../../src/volume/changes.js';
import { DirtyRegionLog } from '../../src/volume/dirty-region-log.js';
import { type CliResult, cli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { FsRawObjects, type RawObjects, S3RawObjects, flipBodyByte, snapshot } from '../helpers/raw-objects.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
const REGIONS = 32;
const fixture = useS3Fixture('scanbad', ['scanbad']);
let counter = 0;

function expectFailure(result: CliResult, code: number, message: RegExp): void {
  expect(result.code, result.stderr).toBe(code);
  const lines = result.stderr.trimEnd().split('\n');
  expect(lines, result.stderr).toHaveLength(1);
  expect(lines[0]).toMatch(/^cdp-s3: /);
  expect(lines[0]).toMatch(message);
}

async function makeRepo(kind: 'fs' | 's3') {
  const n = ++counter;
  const work = join(fixture.dir, `${kind}-${n}`);
  await mkdir(work, { recursive: true });
  const repoUrl = kind === 'fs' ? join(work, 'repo') : `s3://scanbad/r-${n}`;
  const raw: RawObjects = kind === 'fs' ? new FsRawObjects(repoUrl) : new S3RawObjects('scanbad', `r-${n}`, fixture.server.endpoint);
  if (raw instanceof S3RawObjects) fixture.onTeardown(() => raw.destroy());
  const store = openStore(repoUrl);
  const source = join(work, 'disk.img');
  await writeFile(source, makeImage({ size: REGIONS * REGION, regionSize: REGION, seed: n }));
  await init({ store, from: source, regionSize: REGION });
  await backup({ store, source, workers: 2 });
  await backup({ store, source, workers: 2 });
  const repo = await Repository.open(store);
  return { work, repoUrl, raw, store, source, volumeId: repo.config.volumeId };
}

for (const kind of ['fs', 's3'] as const) {
  describe(`scan, verify and the DRL refuse bad input (${kind} store)`, () => {
    it('a source of the wrong size', async () => {
      const f = await makeRepo(kind);
      const other = join(f.work, 'other.img');
      await writeFile(other, Buffer.alloc(REGIONS * REGION + 1));
      const before = await snapshot(f.raw);
      expectFailure(await cli('--repo', f.repoUrl, 'scan', other), EXIT.volume, /is \d+ bytes but the repository's volume is \d+ bytes: scan the disk this repository protects/);
      expect(await snapshot(f.raw)).toEqual(before);
    });

    it('a DRL that belongs to another volume, or is damaged, is refused by scan and backup', async () => {
      const f = await makeRepo(kind);
      const foreign = join(f.work, 'foreign.drl');
      await (await DirtyRegionLog.create(foreign, { volumeId: 'another-volume', regionCount: REGIONS, regionSize: REGION })).close();
      const before = await snapshot(f.raw);
      for (const command of ['scan', 'backup']) {
        expectFailure(await cli('--repo', f.repoUrl, command, f.source, '--drl', foreign), EXIT.volume, /belongs to volume another-volume, this repository is .*: delete it or pass the right --drl/);
      }
      const damaged = join(f.work, 'damaged.drl');
      await (await DirtyRegionLog.create(damaged, { volumeId: f.volumeId, regionCount: REGIONS, regionSize: REGION })).close();
      const bytes = await readFile(damaged);
      bytes[20] = bytes[20]! ^ 0xff; // the header
      await writeFile(damaged, bytes);
      for (const command of ['scan', 'backup']) {
        const result = await cli('--repo', f.repoUrl, command, f.source, '--drl', damaged);
        expectFailure(result, EXIT.integrity, /dirty region log .*damaged.*run a full scan/);
        expect(result.stderr).not.toMatch(/other points in time/);
      }
      expectFailure(await cli('--repo', f.repoUrl, 'scan', f.source, '--drl', join(f.work, 'missing.drl')), EXIT.volume, /missing\.drl/);
      expect(await snapshot(f.raw)).toEqual(before);
    });

    it('a second writer while a lock is held; --force-unlock for a lock left behind', async () => {
      const f = await makeRepo(kind);
      const held = await acquireWriterLock(f.store, { command: 'backup' });
      expectFailure(await cli('--repo', f.repoUrl, 'scan', f.source), 8, /locked by .*backup/);
      expect((await cli('--repo', f.repoUrl, 'scan', f.source, '--dry-run')).code).toBe(0); // a dry run writes nothing and takes no lock
      expect((await cli('--repo', f.repoUrl, '--force-unlock', 'scan', f.source)).code).toBe(0);
      await held.release().catch(() => undefined);
    });

    it('a corrupt delta during a scan or restore is an integrity error, and nothing is written', async () => {
      const f = await makeRepo(kind);
      await f.raw.put('deltas/0000000000000002', flipBodyByte(await f.raw.get('deltas/0000000000000002')));
      const before = await snapshot(f.raw);
      expectFailure(await cli('--repo', f.repoUrl, 'scan', f.source), EXIT.integrity, /delta 0000000000000002: is unreadable \(checksum mismatch/);
      expect(await snapshot(f.raw)).toEqual(before);
      const target = join(f.work, 'out.img');
      expectFailure(await cli('--repo', f.repoUrl, 'restore', '--at', 'latest', '--to', target), EXIT.integrity, /delta 0000000000000002/);
    });

    it('writes through cdp-s3 mark the DRL before they are acknowledged; backup --drl commits and clears them', async () => {
      const f = await makeRepo(kind);
      const drlPath = join(f.work, 'live.drl');
      const drl = await DirtyRegionLog.create(drlPath, { volumeId: f.volumeId, regionCount: REGIONS, regionSize: REGION });
      const writer = await InProcessWriter.open(f.source, geometry(REGIONS * REGION, REGION), { drl });
      await writer.write(7 * REGION + 10, Buffer.alloc(REGION, 0x5a)); // regions 7 and 8
      await drl.close();
      const reopened = await DirtyRegionLog.open(drlPath, { volumeId: f.volumeId, regionCount: REGIONS, regionSize: REGION });
      expect(Array.from(reopened.dirty())).toEqual([7, 8]); // durable before write() resolved
      await reopened.close();
      await writer.close();
      const result = await cli('--repo', f.repoUrl, '--json', 'backup', f.source, '--drl', drlPath);
      expect(result.code, result.stderr).toBe(0);
      expect(JSON.parse(result.stdout)).toMatchObject({ regionsScanned: 2, regionsChanged: 2 });
      const after = await DirtyRegionLog.open(drlPath, { volumeId: f.volumeId, regionCount: REGIONS, regionSize: REGION });
      expect(after.count()).toBe(0);
      await after.close();
      expect((await cli('--repo', f.repoUrl, 'scan', f.source)).code).toBe(0); // in sync
    });
  });
}
