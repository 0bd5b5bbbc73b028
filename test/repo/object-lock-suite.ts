// S3 Object Lock against a server that implements it (Ceph RGW; test/rgw.test.ts runs this):
// the adapter's retention calls, and a repository made with `init --object-lock`: what is
// retained, what a writer's credentials cannot delete, and prune's upkeep (it deletes nothing
// still retained, deletes by version what ran out, extends what is needed, sweeps old versions).
//
// Retention runs on the server's clock, so two tests wait for a retention of a few seconds to
// run out (the wait only ends once the time has passed: a slow machine makes it longer, never
// wrong). Everything else that depends on time uses injected clocks.

import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CreateBucketCommand, PutObjectLockConfigurationCommand, type S3Client } from '@aws-sdk/client-s3';
import { beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { prune } from '../../src/core/prune.js';
import { checkRetention } from '../../src/core/retention.js';
import { verify } from '../../src/core/verify.js';
import { StoreError } from '../../src/errors.js';
import { packKey } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { DAY_MS, RETENTION_KEY, RetainingStore, retainedKey } from '../../src/repo/retaining-store.js';
import { openStore } from '../../src/store/open.js';
import { S3Store } from '../../src/store/s3.js';
import type { ObjectStore, ObjectVersion } from '../../src/store/types.js';
import { cli } from '../helpers/cli.js';
import { makeImage, mutateImage } from '../helpers/images.js';
import { waitUntil } from '../helpers/wait.js';
import { expectStoreError } from '../store/conformance.js';

const LOCK_BUCKET = 'cdp-lock';
const DEFAULT_RETENTION_BUCKET = 'cdp-lock-default';
const MiB = 1024 * 1024;

export interface ObjectLockServer {
  endpoint: string;
  /** A scratch directory for images. */
  dir: string;
  /** A bucket without Object Lock. */
  plainBucket: string;
  client(): S3Client;
}

async function versions(store: ObjectStore, prefix: string): Promise<ObjectVersion[]> {
  const all: ObjectVersion[] = [];
  for await (const v of store.listVersions(prefix)) all.push(v);
  return all;
}

/** Waits until the wall clock is past `until` (a retention running out on this machine's server). */
async function pastTime(until: number): Promise<void> {
  await waitUntil(() => Date.now() > until + 1000, `the clock to pass ${new Date(until).toISOString()}`, 100);
}

export function describeObjectLock(server: () => ObjectLockServer): void {
  let prefixCount = 0;
  const lockStore = (options: { multipartThreshold?: number; partSize?: number } = {}): S3Store =>
    new S3Store({ bucket: LOCK_BUCKET, prefix: `t${++prefixCount}-${Date.now()}/`, endpoint: server().endpoint, ...options });

  beforeAll(async () => {
    const client = server().client();
    await client.send(new CreateBucketCommand({ Bucket: LOCK_BUCKET, ObjectLockEnabledForBucket: true }));
    client.destroy();
  });

  describe('S3Store with Object Lock (Ceph RGW)', () => {
    it('says which buckets have Object Lock, and why not', async () => {
      expect(await lockStore().objectLock()).toEqual({ enabled: true });
      const plain = new S3Store({ bucket: server().plainBucket, prefix: 'p/', endpoint: server().endpoint });
      expect(await plain.objectLock()).toEqual({ enabled: false, why: `bucket ${server().plainBucket} was not created with Object Lock enabled` });
    });

    it('puts under retention (in one request and in parts), lengthens it, and refuses to shorten it or to delete a retained version', async () => {
      const store = lockStore({ multipartThreshold: 6 * MiB, partSize: 5 * MiB });
      const until = Math.ceil((Date.now() + 600_000) / 1000) * 1000;
      await store.put('small', new Uint8Array([1, 2, 3]), { retention: { mode: 'governance', until } });
      // RGW drops the lock headers of a multipart upload: the adapter sets the retention after it.
      await store.put('large', new Uint8Array(7 * MiB), { retention: { mode: 'compliance', until } });
      const small = await store.head('small');
      expect(small?.retention).toEqual({ mode: 'governance', until });
      expect(small?.versionId).toBeTruthy();
      expect((await store.head('large'))?.retention).toEqual({ mode: 'compliance', until });

      await store.retain('small', { mode: 'governance', until: until + 60_000 });
      expect((await store.head('small'))?.retention).toEqual({ mode: 'governance', until: until + 60_000 });
      const shorten = await expectStoreError(store.retain('small', { mode: 'governance', until }), 'auth');
      expect(shorten.message).toMatch(/can only be lengthened, in the same mode/);
      await expectStoreError(store.retain('small', { mode: 'compliance', until: until + 120_000 }), 'auth');

      for (const key of ['small', 'large']) {
        const head = await store.head(key);
        await expectStoreError(store.deleteMany([key], { versionIds: [head!.versionId] }), 'auth');
        expect(await store.head(key)).toEqual(head);
      }
    });

    it('lists versions and delete markers in key order, and deleting versions removes them for good', async () => {
      const store = lockStore();
      await store.put('b', new Uint8Array([1]));
      await store.put('b', new Uint8Array([2, 2]));
      await store.delete('b');
      await store.put('a', new Uint8Array([3]));
      const listed = await versions(store, '');
      expect(listed.map((v) => v.key)).toEqual(['a', 'b', 'b', 'b']);
      // A key's versions and markers come in no promised order among themselves.
      expect(listed.map((v) => [v.key, v.latest, v.deleteMarker, v.size]).sort()).toEqual([
        ['a', true, false, 1],
        ['b', false, false, 1],
        ['b', false, false, 2],
        ['b', true, true, 0],
      ]);
      await store.deleteMany(
        listed.map((v) => v.key),
        { versionIds: listed.map((v) => v.versionId) },
      );
      expect(await versions(store, '')).toEqual([]);
    });

    it('deletes a version once its retention has run out', async () => {
      const store = lockStore();
      const until = Math.ceil((Date.now() + 2000) / 1000) * 1000;
      await store.put('brief', new Uint8Array([1]), { retention: { mode: 'compliance', until } });
      const head = await store.head('brief');
      await pastTime(until);
      await store.deleteMany(['brief'], { versionIds: [head!.versionId] });
      expect(await versions(store, '')).toEqual([]);
    });
  });

  describe('cdp-s3 with Object Lock (Ceph RGW)', () => {
    it('init --object-lock refuses a bucket without Object Lock and bad flags, writing nothing', async () => {
      const source = join(server().dir, 'lock-refused.img');
      await writeFile(source, makeImage({ size: 256 * 1024, regionSize: 64 * 1024, seed: 5 }));
      const repo = `s3://${server().plainBucket}/lock-refused`;
      const plain = await cli('--repo', repo, 'init', '--from', source, '--region-size', '64KiB', '--object-lock', 'governance', '--lock-days', '30');
      expect(plain.code, plain.stderr).toBe(EXIT.store);
      expect(plain.stderr.trim()).toBe(
        `cdp-s3: cannot use --object-lock: bucket ${server().plainBucket} was not created with Object Lock enabled; use a bucket created with Object Lock enabled (e.g. aws s3api create-bucket --object-lock-enabled-for-bucket), or leave out --object-lock`,
      );
      const lockRepo = `s3://${LOCK_BUCKET}/lock-refused`;
      for (const [flags, message] of [
        [['--object-lock', 'forever', '--lock-days', '30'], /--object-lock must be governance or compliance, not "forever"/],
        [['--object-lock', 'governance', '--lock-days', '0'], /--lock-days must be a whole number of days from 1 to 36500, not 0/],
        [['--object-lock', 'governance', '--lock-days', '2w'], /--lock-days must be a whole number of days, not "2w"/],
        [['--object-lock', 'compliance'], /--object-lock compliance needs --lock-days N/],
        [['--lock-days', '30'], /--lock-days needs --object-lock governance\|compliance/],
      ] as const) {
        const result = await cli('--repo', lockRepo, 'init', '--from', source, '--region-size', '64KiB', ...flags);
        expect(result.code, result.stderr).toBe(EXIT.usage);
        expect(result.stderr).toMatch(message);
        expect(result.stderr.trim().split('\n')).toHaveLength(1);
      }
      // A bucket whose rule retains every new object would lock cdp-s3's locks and status too.
      const client = server().client();
      await client.send(new CreateBucketCommand({ Bucket: DEFAULT_RETENTION_BUCKET, ObjectLockEnabledForBucket: true }));
      await client.send(
        new PutObjectLockConfigurationCommand({
          Bucket: DEFAULT_RETENTION_BUCKET,
          ObjectLockConfiguration: { ObjectLockEnabled: 'Enabled', Rule: { DefaultRetention: { Mode: 'GOVERNANCE', Days: 3 } } },
        }),
      );
      client.destroy();
      const ruled = await cli('--repo', `s3://${DEFAULT_RETENTION_BUCKET}/lock-refused`, 'init', '--from', source, '--region-size', '64KiB', '--object-lock', 'governance', '--lock-days', '3');
      expect(ruled.code, ruled.stderr).toBe(EXIT.store);
      expect(ruled.stderr).toMatch(/has a default retention \(governance, 3 days\), which would also lock the objects cdp-s3 rewrites and deletes .*remove the bucket's default retention rule/);
      for (const bucket of [server().plainBucket, LOCK_BUCKET, DEFAULT_RETENTION_BUCKET]) {
        const raw = new S3Store({ bucket, prefix: 'lock-refused/', endpoint: server().endpoint });
        expect(await versions(raw, '')).toEqual([]);
      }
    });

    it('retains every object the history needs and nothing that is rewritten; the writer cannot delete them; status and verify report the lock', async () => {
      const dir = server().dir;
      const source = join(dir, 'locked.img');
      const image = makeImage({ size: 1024 * 1024, regionSize: 64 * 1024, seed: 11 });
      await writeFile(source, image);
      const prefix = `locked-${Date.now()}`;
      const repo = `s3://${LOCK_BUCKET}/${prefix}`;
      const started = Date.now();
      const made = await cli('--repo', repo, 'init', '--from', source, '--region-size', '64KiB', '--object-lock', 'governance', '--lock-days', '3');
      expect(made.code, made.stderr).toBe(0);
      expect(made.stdout).toMatch(/encrypted .*, Object Lock governance for 3 days/);
      for (let round = 0; round < 2; round++) {
        if (round > 0) {
          mutateImage(image, 3, round);
          await writeFile(source, image);
        }
        const b = await cli('--repo', repo, 'backup', source);
        expect(b.code, b.stderr).toBe(0);
      }
      const ended = Date.now();

      const raw = new S3Store({ bucket: LOCK_BUCKET, prefix: `${prefix}/`, endpoint: server().endpoint });
      const all = await versions(raw, '');
      const kinds = new Set(all.map((v) => v.key.split('/')[0]));
      for (const kind of ['config', 'keys', 'deltas', 'packs', 'locks']) expect(kinds).toContain(kind);
      for (const v of all) {
        if (v.deleteMarker) {
          expect(retainedKey(v.key), `${v.key} was deleted`).toBe(false);
          continue;
        }
        const head = await raw.head(v.key);
        if (!v.latest) {
          expect(retainedKey(v.key), `${v.key} was rewritten`).toBe(false);
          continue;
        }
        if (retainedKey(v.key)) {
          expect(head?.retention?.mode, v.key).toBe('governance');
          expect(head!.retention!.until).toBeGreaterThanOrEqual(started + 3 * DAY_MS - 1000);
          expect(head!.retention!.until).toBeLessThanOrEqual(ended + 3 * DAY_MS + 1000);
        } else {
          expect(head?.retention, v.key).toBeUndefined();
        }
      }

      // The writer's own credentials cannot remove any retained version.
      const retained = all.filter((v) => !v.deleteMarker && retainedKey(v.key));
      const refused = await expectStoreError(
        raw.deleteMany(
          retained.map((v) => v.key),
          { versionIds: retained.map((v) => v.versionId) },
        ),
        'auth',
      );
      expect(refused.message).toMatch(/AccessDenied/);
      expect((await versions(raw, '')).filter((v) => retainedKey(v.key))).toEqual(all.filter((v) => retainedKey(v.key)));
      const restored = join(dir, 'locked-restored.img');
      const r = await cli('--repo', repo, 'restore', '--at', 'latest', '--to', restored);
      expect(r.code, r.stderr).toBe(0);

      const status = await cli('--repo', repo, 'status');
      expect(status.code, status.stderr).toBe(0);
      expect(status.stdout).toMatch(/Object Lock governance, 3 days: what the history needs is retained until \S+; next extension from \S+ \(cdp-s3 prune\)/);
      const checked = await cli('--repo', repo, 'verify');
      expect(checked.code, checked.stdout + checked.stderr).toBe(0);
      expect(checked.stdout).toMatch(new RegExp(`Object Lock: read the retention of ${retained.length} objects the history needs`));
      expect(checked.stdout).toMatch(/no problems found/);

      // A removed key file is only hidden: cdp-s3 says until when its bytes stay.
      process.env['CDP_S3_NEW_PASSWORD'] = 'second password';
      try {
        const added = await cli('--repo', repo, 'key', 'add', '--json');
        expect(added.code, added.stderr).toBe(0);
        const { id } = JSON.parse(added.stdout) as { id: string };
        const removed = await cli('--repo', repo, 'key', 'remove', id);
        expect(removed.code, removed.stderr).toBe(0);
        expect(removed.stdout).toMatch(new RegExp(`removed key ${id} \\(Object Lock keeps its bytes in the bucket until \\S+: until then its password still opens`));
      } finally {
        delete process.env['CDP_S3_NEW_PASSWORD'];
      }
    });

    it('after the writer\'s credentials deleted every object (delete markers), undelete brings the history back', async () => {
      const source = join(server().dir, 'undelete.img');
      const image = makeImage({ size: 512 * 1024, regionSize: 64 * 1024, seed: 23 });
      await writeFile(source, image);
      const prefix = `undelete-${Date.now()}`;
      const repo = `s3://${LOCK_BUCKET}/${prefix}`;
      expect((await cli('--repo', repo, 'init', '--from', source, '--region-size', '64KiB', '--object-lock', 'compliance', '--lock-days', '1')).code).toBe(0);
      expect((await cli('--repo', repo, 'backup', source)).code).toBe(0);
      const raw = new S3Store({ bucket: LOCK_BUCKET, prefix: `${prefix}/`, endpoint: server().endpoint });
      const keys: string[] = [];
      for await (const info of raw.list('')) keys.push(info.key);
      // What ransomware with the writer's credentials can do: delete every key (no version given).
      await raw.deleteMany(keys);
      const gone = await cli('--repo', repo, 'restore', '--at', 'latest', '--to', join(server().dir, 'undelete-gone.img'));
      expect(gone.code, gone.stderr).toBe(EXIT.repository);

      const dry = await cli('--repo', repo, 'undelete', '--dry-run', '--json');
      expect(dry.code, dry.stderr).toBe(0);
      const planned = JSON.parse(dry.stdout) as { restored: string[]; keyFiles: number };
      expect(planned.restored).toEqual(keys.filter(retainedKey).sort());
      expect(planned.keyFiles).toBe(1);
      expect(await raw.head('config')).toBeUndefined();

      const done = await cli('--repo', repo, 'undelete');
      expect(done.code, done.stderr).toBe(0);
      expect(done.stdout).toMatch(new RegExp(`brought back ${planned.restored.length} objects`));
      const restored = join(server().dir, 'undelete-restored.img');
      const r = await cli('--repo', repo, 'restore', '--at', 'latest', '--to', restored);
      expect(r.code, r.stderr).toBe(0);
      expect((await readFile(restored)).equals(image)).toBe(true);
      expect((await cli('--repo', repo, 'undelete')).stdout).toMatch(/nothing the history needs is hidden by a delete marker/);
    });

    it('prune deletes nothing still retained, deletes by version what ran out, extends what is needed, and sweeps old versions', async () => {
      const source = join(server().dir, 'upkeep.img');
      const image = makeImage({ size: 512 * 1024, regionSize: 64 * 1024, seed: 17 });
      await writeFile(source, image);
      const prefix = `upkeep-${Date.now()}`;
      const raw = openStore(`s3://${LOCK_BUCKET}/${prefix}`, { endpoint: server().endpoint });
      const policy = { mode: 'governance' as const, days: 1 };
      // Objects put through this store are retained for a few seconds only, as if put a day ago.
      const briefly = new RetainingStore(raw, policy, () => Date.now() - DAY_MS + 4000);
      await init({ store: briefly, from: source, regionSize: 64 * 1024, objectLock: policy });
      await backup({ store: briefly, source });
      mutateImage(image, 2, 1);
      await writeFile(source, image);
      await backup({ store: briefly, source });
      // A crashed writer's leftover, long unneeded.
      const leftover = packKey(1, 'deadbeef');
      await briefly.put(leftover, new Uint8Array(100));
      const leftoverUntil = (await raw.head(leftover))!.retention!.until;

      // While its retention runs, the leftover waits: not deleted, not even tried.
      const before = Date.now() - 3_600_000;
      const first = await prune({ store: briefly, graceMs: 0, clock: () => before });
      expect(first.deleted).toEqual([]);
      expect(first.locked).toEqual([{ key: leftover, bytes: 100, until: leftoverUntil }]);
      expect(first.retention).toMatchObject({ due: false, extended: 0 });
      expect(await raw.head(leftover)).toBeDefined();

      // Once it has run out, prune deletes it by version: no bytes and no delete marker stay.
      await pastTime(leftoverUntil);
      const second = await prune({ store: briefly, graceMs: 0 });
      expect(second.deleted.map((d) => d.key)).toEqual([leftover]);
      expect(second.locked).toEqual([]);
      expect(await versions(raw, leftover)).toEqual([]);

      // What the history needs ran out too (it was put "a day ago"): verify says so.
      const repo = await Repository.open(briefly);
      const atRisk = await checkRetention(repo, policy, { clock: Date.now, candidates: new Set() });
      expect(atRisk.checked).toBeGreaterThanOrEqual(5); // config, two deltas, their packs
      expect(atRisk.atRisk).toHaveLength(atRisk.checked);
      const verified = await verify({ store: briefly, dryRun: true });
      expect(verified.retention?.atRisk.length).toBe(atRisk.checked);

      // The extension is due (half a day after init): prune extends everything needed, once.
      const later = Date.now() + DAY_MS / 2 + 60_000;
      const third = await prune({ store: briefly, graceMs: 0, clock: () => later });
      expect(third.retention).toMatchObject({ due: true, extended: atRisk.checked, until: Math.ceil((later + DAY_MS) / 1000) * 1000 });
      const fourth = await prune({ store: briefly, graceMs: 0, clock: () => later + 60_000 });
      expect(fourth.retention).toMatchObject({ due: false, extended: 0, until: third.retention!.until });
      const after = await checkRetention(repo, policy, { clock: () => later, candidates: new Set() });
      expect(after).toEqual({ checked: atRisk.checked, atRisk: [] });

      // Locks, prune records and the retention record leave no older versions or markers behind,
      // but for the lock of the last prune (released after its sweep: the next prune sweeps it).
      const locks = await versions(raw, 'locks/');
      expect(new Set(locks.map((v) => v.key)).size).toBe(1);
      expect(locks.map((v) => [v.latest, v.deleteMarker]).sort()).toEqual([
        [false, false],
        [true, true],
      ]);
      for (const unretained of ['prunes/', RETENTION_KEY]) {
        for (const v of await versions(raw, unretained)) expect([v.key, v.latest, v.deleteMarker]).toEqual([v.key, true, false]);
      }
      expect(third.versionsSwept + fourth.versionsSwept + second.versionsSwept + first.versionsSwept).toBeGreaterThan(0);
    });

    it('a store without Object Lock refuses a retention instead of ignoring it', async () => {
      const plain = new S3Store({ bucket: server().plainBucket, prefix: 'no-lock/', endpoint: server().endpoint });
      const error = await plain.put('k', new Uint8Array(1), { retention: { mode: 'governance', until: Date.now() + 60_000 } }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(StoreError);
      expect(await plain.head('k')).toBeUndefined();
    });
  });
}
