// The Object Lock policy away from a server: which keys are retained, what a RetainingStore puts,
// the config's objectLock field (in the clear also when encrypted), and that a repository with
// Object Lock is only opened through a store that retains (test/repo/object-lock-suite.ts runs
// the rest on Ceph RGW).

import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { FormatError, InvalidArgumentError } from '../../src/errors.js';
import { configObjectLock, decodeConfig, encodeConfig, newConfig } from '../../src/repo/config.js';
import { repoKeys } from '../../src/repo/crypto.js';
import { CONFIG_KEY } from '../../src/repo/keys.js';
import { Repository } from '../../src/repo/repository.js';
import { DAY_MS, RETENTION_KEY, RetainingStore, checkObjectLockPolicy, retainedKey, storeObjectLock } from '../../src/repo/retaining-store.js';
import { unlockStore } from '../../src/repo/unlock.js';
import { DelegatingStore } from '../../src/store/delegating.js';
import { FsStore } from '../../src/store/fs.js';
import type { PutOptions, Retention } from '../../src/store/types.js';
import { sealEnvelope } from '../../src/repo/envelope.js';
import { CONFIG_KIND } from '../../src/repo/config.js';

/** Records each put's retention and stores the object without it (a local directory has no Object Lock). */
class RecordingStore extends DelegatingStore {
  readonly retentions = new Map<string, Retention | undefined>();
  override async put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    this.retentions.set(key, options?.retention);
    const { retention: _dropped, ...rest } = options ?? {};
    await this.inner.put(key, body, rest);
  }
}

const dirs: string[] = [];
async function scratch(): Promise<FsStore> {
  const dir = await mkdtemp(join(tmpdir(), 'cdp-retain-'));
  dirs.push(dir);
  return new FsStore(dir);
}
afterEach(async () => {
  for (const dir of dirs.splice(0)) await rm(dir, { recursive: true, force: true });
});

describe('Object Lock policy', () => {
  it('retains what the history needs, not what is rewritten or deleted in normal operation', () => {
    for (const key of ['config', 'keys/0123456789abcdef', 'deltas/0000000000000001', 'spans/1/0000000000000001', 'packs/0000000000000001-deadbeef', 'pages/0000000000000001-deadbeef', 'compactions/0000000000000001', 'marks/x', 'scans/x', 'forgets/x', 'verifies/x']) {
      expect(retainedKey(key), key).toBe(true);
    }
    for (const key of ['locks/0123', 'status/host-abc', 'prunes/x', RETENTION_KEY]) expect(retainedKey(key), key).toBe(false);
  });

  it('puts retained keys under the lock days from the clock (whole seconds), others without', async () => {
    const recording = new RecordingStore(await scratch());
    const store = new RetainingStore(recording, { mode: 'compliance', days: 7 }, () => 1_000_000_000_123);
    await store.put('packs/0000000000000001-deadbeef', new Uint8Array(1));
    await store.put('locks/0123', new Uint8Array(1));
    await store.put(RETENTION_KEY, new Uint8Array(1));
    expect([...recording.retentions]).toEqual([
      ['packs/0000000000000001-deadbeef', { mode: 'compliance', until: 1_000_000_001_000 + 7 * DAY_MS }],
      ['locks/0123', undefined],
      [RETENTION_KEY, undefined],
    ]);
    expect(storeObjectLock(new DelegatingStore(store))).toEqual({ mode: 'compliance', days: 7 });
    expect(storeObjectLock(recording)).toBeUndefined();
  });

  it('refuses a mode other than governance or compliance, and days out of range', () => {
    expect(() => checkObjectLockPolicy({ mode: 'legal-hold', days: 1 })).toThrow(InvalidArgumentError);
    for (const days of [0, -1, 1.5, 36_501]) expect(() => checkObjectLockPolicy({ mode: 'governance', days })).toThrow(/--lock-days must be a whole number of days from 1 to 36500/);
  });

  it('the config keeps objectLock, in the clear also when encrypted; a damaged one is refused by name', () => {
    const objectLock = { mode: 'governance' as const, days: 30 };
    const plain = newConfig({ volumeSize: 1 << 20, objectLock });
    expect(decodeConfig(encodeConfig(plain))).toEqual(plain);
    expect(configObjectLock(encodeConfig(plain))).toEqual(objectLock);
    const keys = repoKeys(randomBytes(32));
    const sealed = newConfig({ volumeSize: 1 << 20, encryption: 'aes-256-gcm', objectLock });
    const bytes = encodeConfig(sealed, keys);
    expect(configObjectLock(bytes)).toEqual(objectLock);
    expect(decodeConfig(bytes, keys)).toEqual(sealed);
    expect(configObjectLock(encodeConfig(newConfig({ volumeSize: 1 << 20 })))).toBeUndefined();
    const { objectLock: _o, ...fields } = plain;
    const damaged = sealEnvelope(CONFIG_KIND, { ...fields, objectLock: { mode: 'governance', days: 0 } });
    expect(() => decodeConfig(damaged)).toThrow(FormatError);
    expect(() => configObjectLock(damaged)).toThrow(/objectLock.*days/);
  });

  it('a repository with Object Lock opens only through a store that retains (unlockStore stacks one)', async () => {
    const fs = await scratch();
    await fs.put(CONFIG_KEY, encodeConfig(newConfig({ volumeSize: 1 << 20, objectLock: { mode: 'compliance', days: 2 } })));
    await expect(Repository.open(fs)).rejects.toThrow(/has Object Lock: open its store through unlockStore/);
    const store = await unlockStore(fs, undefined);
    expect(storeObjectLock(store)).toEqual({ mode: 'compliance', days: 2 });
    expect((await Repository.open(store)).config.objectLock).toEqual({ mode: 'compliance', days: 2 });
  });
});
