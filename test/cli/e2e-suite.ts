// The end-to-end command-line suite, shared by every store it runs against: the local store and
// s3rver (e2e.test.ts) and Ceph RGW (test/rgw.test.ts). Back up an image, change it over several
// rounds, and restore every round by sequence number and by time, bit-exact.

import { createHash } from 'node:crypto';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { makeImage, mutateImage } from '../helpers/images.js';
import { cli } from '../helpers/cli.js';

const REGION = 64 * 1024;

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/**
 * `kind` names the store in test names and scratch files; `dir` is a scratch directory and `repo`
 * the --repo value, both read inside tests (the caller sets them up in beforeAll, with the AWS
 * environment pointed at its S3 server).
 */
export function describeEndToEnd(kind: string, dirOf: () => string, repo: () => string): void {
  describe(`cdp-s3 end to end (${kind} store)`, () => {
    let dir: string;
    beforeAll(() => {
      dir = dirOf();
    });

    it('backs up several rounds and restores each by seq and by time, bit-exact', async () => {
      const image = makeImage({ size: 4 * 1024 * 1024 + 4096 + 7, regionSize: REGION, seed: 11 });
      const source = join(dir, `${kind}-disk.img`);
      await writeFile(source, image);
      expect((await cli('--repo', repo(), 'init', '--from', source, '--region-size', '64KiB')).code).toBe(0);

      const rounds: Array<{ seq: number; time: string; digest: string }> = [];
      for (let round = 0; round < 4; round++) {
        if (round > 0) {
          mutateImage(image, 4, 100 + round);
          await writeFile(source, image);
        }
        const result = await cli('--repo', repo(), '--json', 'backup', source);
        expect(result.code, result.stderr).toBe(0);
        const report = JSON.parse(result.stdout) as { seq: number; time: string; kind: string };
        expect(report.seq).toBe(round + 1);
        expect(report.kind).toBe(round === 0 ? 'base' : 'host');
        rounds.push({ seq: report.seq, time: report.time, digest: sha(image) }); // backup makes each time later than the last
      }

      const logged = await cli('--repo', repo(), '--json', 'log');
      const entries = JSON.parse(logged.stdout) as Array<Record<string, unknown>>;
      expect(entries.map((e) => e['seq'])).toEqual([1, 2, 3, 4]);
      for (const entry of entries) {
        expect(Object.keys(entry)).toEqual(expect.arrayContaining(['seq', 'time', 'kind', 'regions', 'bytes', 'suspect']));
        expect(entry['time']).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
        expect(entry['suspect']).toBe(false);
      }
      expect((await cli('--repo', repo(), 'log')).stdout).toMatch(/seq\s+time \(UTC\)\s+kind/);

      for (const round of rounds) {
        for (const at of [String(round.seq), round.time]) {
          const target = join(dir, `${kind}-restore-${round.seq}-${at.length}.img`);
          const restored = await cli('--repo', repo(), 'restore', '--at', at, '--to', target);
          expect(restored.code, restored.stderr).toBe(0);
          expect(sha(await readFile(target)), `seq ${round.seq} via --at ${at}`).toBe(round.digest);
        }
      }
      const latest = await cli('--repo', repo(), 'restore', '--at', 'latest', '--to', '-');
      expect(latest.code, latest.stderr).toBe(0);
      expect(sha(latest.stdoutBytes)).toBe(rounds.at(-1)!.digest);
    });

    it('restore --dry-run prints the plan and writes nothing', async () => {
      const target = join(dir, `${kind}-dry.img`);
      const result = await cli('--repo', repo(), '--json', 'restore', '--at', '1', '--to', target, '--dry-run');
      expect(result.code, result.stderr).toBe(0);
      const plan = JSON.parse(result.stdout) as Record<string, number>;
      expect(plan['seq']).toBe(1);
      expect(plan['dataRegions']! + plan['zeroRegions']!).toBe(plan['regions']);
      expect(plan['downloadBytes']).toBeGreaterThan(0);
      await expect(stat(target)).rejects.toThrow();
    });

    it('backup --changed reads only the listed ranges and still restores exactly', async () => {
      const source = join(dir, `${kind}-disk.img`);
      const image = await readFile(source);
      const spans = [
        [5 * REGION + 100, 3000],
        [40 * REGION, 2 * REGION],
      ] as const;
      for (const [offset, length] of spans) image.fill(0xab, offset, offset + length);
      await writeFile(source, image);
      const changedFile = join(dir, `${kind}-changed.txt`);
      await writeFile(changedFile, `# from a change tracker\n${spans.map(([o, l]) => `${o} ${l}`).join('\n')}\n`);
      const result = await cli('--repo', repo(), '--json', 'backup', source, '--changed', changedFile);
      expect(result.code, result.stderr).toBe(0);
      const report = JSON.parse(result.stdout) as { regionsScanned: number; regionsChanged: number };
      expect(report.regionsScanned).toBe(3);
      expect(report.regionsChanged).toBe(3);
      const target = join(dir, `${kind}-changed-restore.img`);
      expect((await cli('--repo', repo(), 'restore', '--at', 'latest', '--to', target)).code).toBe(0);
      expect(sha(await readFile(target))).toBe(sha(image));
    });
  });
}
