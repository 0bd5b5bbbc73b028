// Encryption and compression (docs/FORMAT.md, "Encryption", "Pieces"): known answers of the
// sealing, what a bucket reader can learn (nothing of the disk), tampering refused and named,
// passwords and keys, and the bytes compression saves. On the local store and on an S3 server.

import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { addKey, changePassword, listKeys, removeKey } from '../../src/core/keys.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { scan } from '../../src/core/scan.js';
import { verify } from '../../src/core/verify.js';
import { CdpError } from '../../src/errors.js';
import { Sealer, keyedName, repoKeys } from '../../src/repo/crypto.js';
import { passwordKey, unwrapKey } from '../../src/repo/key-files.js';
import { BlobCodec } from '../../src/repo/page-packs.js';
import { SealedStore } from '../../src/repo/sealed-store.js';
import { identityHash } from '../../src/model/regions.js';
import { openStore } from '../../src/store/open.js';
import { PieceCodec } from '../../src/repo/pieces.js';
import { Repository } from '../../src/repo/repository.js';
import { createKeys, unlockStore } from '../../src/repo/unlock.js';
import type { ObjectStore } from '../../src/store/types.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';

const REGION = 64 * 1024;
/** Cheap keys: a test makes many (the default costs about half a second each). */
const KDF = { n: 1024, r: 8, p: 1 };
const PASSWORD = 'correct horse battery staple';
const fixture = useS3Fixture('encryption', ['enc']);

/**
 * An image whose every region carries a marker string among random bytes (so it does not
 * compress away), plus a few regions of repeated text: what must never appear in the bucket.
 */
function markedImage(regions: number, seed: number): Buffer {
  const image = Buffer.alloc(regions * REGION);
  for (let r = 0; r < regions; r++) {
    const region = image.subarray(r * REGION, (r + 1) * REGION);
    if (r % 5 === 4) {
      region.fill(`MARKER-TEXT-${seed}-${r} the quick brown fox `);
      continue;
    }
    randomBytes(REGION).copy(region);
    for (let at = 0; at + 64 < REGION; at += 4096) region.write(`MARKER-${seed}-${r}-${at}`, at, 'latin1');
  }
  return image;
}

const sha = (bytes: Uint8Array): Buffer => createHash('sha256').update(bytes).digest();

async function everyObject(raw: { keys(prefix?: string): Promise<string[]>; get(key: string): Promise<Buffer> }): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (const key of await raw.keys()) parts.push(Buffer.from(key, 'utf8'), await raw.get(key));
  return Buffer.concat(parts);
}

async function encryptedRepo(kind: 'fs' | 's3', n: number, image: Buffer, compression: 'off' | 'fast' = 'fast') {
  const scratch = await fixture.repository(kind, 'enc', n);
  const source = join(scratch.work, 'disk.img');
  await writeFile(source, image);
  const { store } = await init({ store: scratch.store, from: source, regionSize: REGION, password: PASSWORD, kdf: KDF, compression });
  return { ...scratch, source, sealed: store };
}

describe('the sealing (known answers)', () => {
  it('seals with AES-256-GCM: fixed key, nonce and associated data give fixed bytes', () => {
    const sealer = new Sealer(Buffer.alloc(32, 7));
    const sealed = sealer.seal(Buffer.from('cdp-s3 known answer'), Buffer.from('cdp-s3 object deltas/0000000000000001'), Buffer.alloc(12, 1));
    expect(Buffer.from(sealed).toString('hex')).toBe(KNOWN_SEALED);
    expect(Buffer.from(sealer.open(sealed, Buffer.from('cdp-s3 object deltas/0000000000000001'), 'x')).toString()).toBe('cdp-s3 known answer');
    // Another object's key as associated data: refused.
    expect(() => sealer.open(sealed, Buffer.from('cdp-s3 object deltas/0000000000000002'), 'deltas/0000000000000002')).toThrow(/does not authenticate/);
  });

  it('derives the same keys from the same master key, and pieces decode only under them', async () => {
    const keys = repoKeys(Buffer.alloc(32, 9));
    expect(Buffer.from(keys.identity).toString('hex')).toBe(KNOWN_IDENTITY_KEY);
    const codec = new PieceCodec('volume', keys.sealer);
    const text = Buffer.from('a line of a log file\n'.repeat(1000));
    const stored = await codec.encode(text, 'fast');
    expect(stored.length).toBeLessThan(text.length / 10);
    expect(Buffer.from(await codec.decode(stored, 'piece', text.length)).equals(text)).toBe(true);
    await expect(new PieceCodec('another volume', keys.sealer).decode(stored, 'piece', text.length)).rejects.toThrow(/does not authenticate/);
    await expect(new PieceCodec('volume', repoKeys(Buffer.alloc(32, 8)).sealer).decode(stored, 'piece', text.length)).rejects.toThrow(/does not authenticate/);
  });
});

describe('the golden known answers (test/fixtures/format6/crypto, computed with Python)', () => {
  it('derives the same keys, identities and names, opens every sealed kind through its own code path, and unwraps the key file', async () => {
    const v = JSON.parse(await readFile(join(import.meta.dirname, '..', 'fixtures', 'format6', 'crypto', 'known-answers.json'), 'utf8')) as KnownAnswers;
    const hex = (text: string): Buffer => Buffer.from(text, 'hex');
    const keys = repoKeys(hex(v.master));
    expect([keys.identity, keys.names].map((k) => Buffer.from(k).toString('hex'))).toEqual([v.keys.identity, v.keys.names]);
    expect(identityHash(keys.identity).update(hex(v.identity.region)).digest('hex')).toBe(v.identity.hmac);
    expect(keyedName(keys, v.statusName.text)).toBe(v.statusName.name);
    const data = new Sealer(hex(v.keys.data));
    for (const sealed of v.sealed) {
      // Sealing with the vector's nonce gives its bytes: the data key is the one HKDF derives.
      expect(Buffer.from(data.seal(hex(sealed.plain), Buffer.from(sealed.aad), hex(v.nonce))).toString('hex'), sealed.what).toBe(sealed.sealed);
      expect(Buffer.from(keys.sealer.open(hex(sealed.sealed), Buffer.from(sealed.aad), sealed.what)).toString('hex')).toBe(sealed.plain);
    }
    const of = (what: string): { plain: string; sealed: string } => v.sealed.find((s) => s.what === what)!;
    // Each kind opened by the code that reads it (its associated data built there).
    const plainStore = openStore(join(fixture.dir, 'known-answers'));
    await plainStore.put('deltas/0000000000000001', hex(of('object').sealed));
    expect(Buffer.from(await new SealedStore(plainStore, keys).get('deltas/0000000000000001')).toString('hex')).toBe(of('object').plain);
    expect(Buffer.from(await new PieceCodec(v.volumeId, keys.sealer).decode(hex(of('piece').sealed), 'piece', 1 << 20)).toString('hex')).toBe(v.identity.region);
    expect(Buffer.from(new BlobCodec(v.volumeId, keys.sealer).open(hex(of('blob').sealed), 'blob')).toString('hex')).toBe(of('blob').plain);
    const k = v.keyFile;
    expect(Buffer.from(await passwordKey(k.password, hex(k.salt), k)).toString('hex')).toBe(k.kek);
    const unwrapped = await unwrapKey({ id: k.id, created: 0, host: '', kdf: k, salt: hex(k.salt), wrapped: hex(k.wrapped) }, k.password);
    expect(Buffer.from(unwrapped!).toString('hex')).toBe(v.master);
    expect(await unwrapKey({ id: k.id, created: 0, host: '', kdf: k, salt: hex(k.salt), wrapped: hex(k.wrapped) }, 'wrong')).toBeUndefined();
  });
});

interface KnownAnswers {
  master: string;
  volumeId: string;
  nonce: string;
  keys: { data: string; identity: string; names: string };
  identity: { region: string; hmac: string };
  statusName: { text: string; name: string };
  sealed: Array<{ what: string; aad: string; plain: string; sealed: string }>;
  keyFile: { password: string; salt: string; n: number; r: number; p: number; id: string; kek: string; wrapped: string };
}

describe.each(['fs', 's3'] as const)('an encrypted repository (%s)', (kind) => {
  it('leaks no plaintext and no plain digest, restores bit-exact, and scans without downloading a region', async () => {
    const image = markedImage(24, 1);
    const repo = await encryptedRepo(kind, 1, image, 'off');
    await backup({ store: repo.sealed, source: repo.source });
    image.write('MARKER-CHANGED-REGION', 3 * REGION + 100, 'latin1');
    await writeFile(repo.source, image);
    await backup({ store: repo.sealed, source: repo.source });

    const bucket = await everyObject(repo.raw);
    expect(bucket.includes(Buffer.from('MARKER-'))).toBe(false);
    expect(bucket.includes(Buffer.from(`MARKER-TEXT-1-4 the quick`))).toBe(false);
    for (let r = 0; r < 24; r++) expect(bucket.includes(sha(image.subarray(r * REGION, (r + 1) * REGION))), `region ${r}'s SHA-256`).toBe(false);
    // Names say kind and order only.
    for (const key of await repo.raw.keys()) expect(key).toMatch(/^(config|keys\/[0-9a-f]{16}|deltas\/\d{16}|spans\/\d\d\/\d{16}|packs\/\d{16}-[0-9a-f]{8}|pages\/\d{16}-[0-9a-f]{8}|marks\/.*|scans\/.*)$/);

    const plan = await planRestore({ store: repo.sealed, at: parsePointSelector('2') });
    const target = join(repo.work, 'restored.img');
    await executeRestore(plan, { to: target });
    expect((await readFile(target)).equals(image)).toBe(true);

    // --reuse-target on an older copy: hashed with the keyed identity, only what differs is fetched.
    const older = join(repo.work, 'older.img');
    await executeRestore(await planRestore({ store: repo.sealed, at: parsePointSelector('1') }), { to: older });
    const reused = await executeRestore(await planRestore({ store: repo.sealed, at: parsePointSelector('2') }), { to: older, reuseTarget: true });
    expect((await readFile(older)).equals(image)).toBe(true);
    expect(reused.regionsReused).toBe(23);

    // The scan compares keyed identities: no region is downloaded.
    let packGets = 0;
    const counting: ObjectStore = Object.create(repo.sealed, {
      get: { value: (key: string, options?: object) => ((packGets += key.startsWith('packs/') ? 1 : 0), repo.sealed.get(key, options)) },
    });
    const result = await scan({ store: counting, source: repo.source });
    expect(result.discrepancies).toBe(0);
    expect(packGets).toBe(0);
  });
});

describe('tampering', () => {
  it('refuses a flipped bit in any metadata object, an object moved to another key, and names damaged pieces', async () => {
    const image = markedImage(12, 2);
    const repo = await encryptedRepo('fs', 10, image);
    await backup({ store: repo.sealed, source: repo.source });
    image.fill(1, 0, REGION);
    await writeFile(repo.source, image);
    await backup({ store: repo.sealed, source: repo.source });
    const open = async () => unlockStore(repo.store, async () => PASSWORD);

    // A flipped bit in a delta: refused as corrupt.
    const delta1 = await repo.raw.get('deltas/0000000000000001');
    const flipped = Buffer.from(delta1);
    flipped[flipped.length >> 1]! ^= 1;
    await repo.raw.put('deltas/0000000000000001', flipped);
    const corrupt = await planRestore({ store: await open(), at: parsePointSelector('1') }).catch((e: unknown) => e);
    expect((corrupt as CdpError).code).toMatch(/^FORMAT_CORRUPT|NO_POINT_IN_TIME$/);
    // Another delta's (valid) bytes under its key: refused too (the key is authenticated).
    await repo.raw.put('deltas/0000000000000001', await repo.raw.get('deltas/0000000000000002'));
    const swapped = await (await Repository.open(await open())).readRun({ level: 0, first: 1, last: 1, generation: 0 }).catch((e: unknown) => e);
    expect((swapped as CdpError).message).toMatch(/does not authenticate/);
    await repo.raw.put('deltas/0000000000000001', delta1);

    // Two pieces of a pack swapped, and a bit flipped in a third: verify names them.
    const [packKey] = await repo.raw.keys('packs/0000000000000001-');
    const pack = Buffer.from(await repo.raw.get(packKey!));
    const r = await Repository.open(await open());
    const view = await r.view(await r.index(), 1);
    const page = await view.page(0);
    const pieces = [1, 2, 5].map((region) => page.stored(region)!.base!);
    expect(pieces.every((p) => p.pack === packKey)).toBe(true);
    const [a, b, c] = pieces as [typeof pieces[0], typeof pieces[0], typeof pieces[0]];
    if (a.length === b.length) {
      const first = Buffer.from(pack.subarray(a.offset, a.offset + a.length));
      pack.copy(pack, a.offset, b.offset, b.offset + b.length);
      first.copy(pack, b.offset);
    }
    pack[c.offset + 40]! ^= 0x10;
    await repo.raw.put(packKey!, pack);
    const result = await verify({ store: await open(), readData: true });
    const named = result.problems.map((p) => p.detail).join('\n');
    expect(named).toMatch(new RegExp(`${c.offset}`));
    if (a.length === b.length) {
      expect(named).toMatch(new RegExp(`${a.offset}`));
      expect(named).toMatch(new RegExp(`${b.offset}`));
    }
    expect(result.problems.length).toBeGreaterThan(0);
  });
});

describe('passwords and keys', () => {
  it('refuses a missing or wrong password, a repository opened without one, and one whose keys are gone', async () => {
    const repo = await encryptedRepo('fs', 20, markedImage(4, 3));
    await expect(unlockStore(repo.store, async () => undefined)).rejects.toMatchObject({ code: 'PASSWORD', message: expect.stringMatching(/is encrypted and no password was given: set CDP_S3_PASSWORD/) });
    await expect(unlockStore(repo.store, async () => 'wrong')).rejects.toMatchObject({ code: 'PASSWORD', message: expect.stringMatching(/opens none of the 1 key/) });
    await expect(Repository.open(repo.store)).rejects.toMatchObject({ code: 'PASSWORD' });
    await expect(backup({ store: repo.store, source: repo.source })).rejects.toMatchObject({ code: 'PASSWORD' });
    for (const key of await repo.raw.keys('keys/')) await repo.raw.delete(key);
    await expect(unlockStore(repo.store, async () => PASSWORD)).rejects.toMatchObject({ code: 'KEY', message: expect.stringMatching(/holds no readable key/) });
  });

  it('an init interrupted between its key file and its config leaves nothing that gets in the way', async () => {
    const scratch = await fixture.repository('fs', 'enc', 22);
    const source = join(scratch.work, 'disk.img');
    await writeFile(source, markedImage(4, 5));
    await createKeys(scratch.store, PASSWORD, { kdf: KDF }); // the first init's key; then it stopped
    const { store } = await init({ store: scratch.store, from: source, regionSize: REGION, password: PASSWORD, kdf: KDF });
    expect(await scratch.raw.keys('keys/')).toHaveLength(1);
    // A stray key of another master key that the same password opens is passed over.
    await createKeys(openStore(join(scratch.work, 'elsewhere')), PASSWORD, { kdf: KDF }).then(async (other) => {
      const [key] = await openStore(join(scratch.work, 'elsewhere')).list('keys/')[Symbol.asyncIterator]().next().then((r) => [r.value!.key]);
      await scratch.raw.put(key!, await (other as unknown as { plain: ObjectStore }).plain.get(key!));
    });
    expect(await scratch.raw.keys('keys/')).toHaveLength(2);
    await backup({ store: await unlockStore(scratch.store, async () => PASSWORD), source });
    expect(store.location).toBe(scratch.store.location);
  });

  it('adds, lists, removes and changes keys; every point stays restorable; the last key cannot go', async () => {
    const image = markedImage(6, 4);
    const repo = await encryptedRepo('fs', 21, image);
    await backup({ store: repo.sealed, source: repo.source });
    const first = await unlockStore(repo.store, async () => PASSWORD);
    const second = await addKey(first, 'second password', { kdf: KDF });
    const viaSecond = await unlockStore(repo.store, async () => 'second password');
    expect((await listKeys(viaSecond)).map((k) => [k.id, k.current])).toEqual(
      [...[[second.id, true]], ...(await listKeys(first)).filter((k) => k.id !== second.id).map((k) => [k.id, false])].sort((x, y) => String(x[0]).localeCompare(String(y[0]))),
    );
    // Not the key in use, not an unknown one.
    await expect(removeKey(viaSecond, second.id)).rejects.toMatchObject({ code: 'KEY' });
    await expect(removeKey(viaSecond, '0123456789abcdef')).rejects.toMatchObject({ code: 'KEY' });
    await removeKey(viaSecond, (first as unknown as { keyId: string }).keyId);
    await expect(unlockStore(repo.store, async () => PASSWORD)).rejects.toMatchObject({ code: 'PASSWORD' });
    // passwd: the new password opens it, the old does not, and the point restores.
    await changePassword(viaSecond, 'third password', { kdf: KDF });
    await expect(unlockStore(repo.store, async () => 'second password')).rejects.toMatchObject({ code: 'PASSWORD' });
    const third = await unlockStore(repo.store, async () => 'third password');
    expect(await listKeys(third)).toHaveLength(1);
    await expect(removeKey(third, (await listKeys(third))[0]!.id)).rejects.toMatchObject({ code: 'KEY' });
    const target = join(repo.work, 'restored.img');
    await executeRestore(await planRestore({ store: third, at: parsePointSelector('1') }), { to: target });
    expect((await readFile(target)).equals(image)).toBe(true);
  });
});

describe('compression', () => {
  it('stores an image of 50% text, 20% zeros and 30% random in at most 55% of its non-zero bytes', async () => {
    const regions = 40;
    const image = Buffer.alloc(regions * REGION);
    let line = 0;
    for (let r = 0; r < regions; r++) {
      const region = image.subarray(r * REGION, (r + 1) * REGION);
      if (r % 10 < 5) {
        let at = 0;
        while (at < REGION) at += region.write(`2026-12-07T13:${String(line % 60).padStart(2, '0')}:00Z host${line % 7} sshd[${1000 + (line % 977)}]: session opened for user u${line % 13} from 10.0.${line % 255}.${line++ % 251}\n`, at, 'latin1');
      } else if (r % 10 < 7) continue; // zeros
      else randomBytes(REGION).copy(region);
    }
    for (const kind of ['plain', 'encrypted'] as const) {
      const scratch = await fixture.repository('fs', 'enc', kind === 'plain' ? 30 : 31);
      const source = join(scratch.work, 'disk.img');
      await writeFile(source, image);
      const { store } = await init({ store: scratch.store, from: source, regionSize: REGION, ...(kind === 'encrypted' ? { password: PASSWORD, kdf: KDF } : {}) });
      const result = await backup({ store, source });
      const nonZero = 0.8 * image.length;
      expect(result.bytesStored / nonZero, kind).toBeLessThanOrEqual(0.55);
      const target = join(scratch.work, 'restored.img');
      await executeRestore(await planRestore({ store, at: parsePointSelector('1') }), { to: target });
      expect((await readFile(target)).equals(image)).toBe(true);
    }
  });
});

// Computed independently with Python's `cryptography` (AESGCM; HKDF-SHA256, empty salt, info
// "cdp-s3 identity"): the sealing is standard AES-256-GCM and HKDF, readable by any implementation.
const KNOWN_SEALED = '0101010101010101010101011585f99ae38ccc65bfbbab4f50561e42df9e6646ce280deab2db96dad84701c5b35795';
const KNOWN_IDENTITY_KEY = '659009431a8c21896edab9c105f33614b940b4bca85b80daf1bf96301fbcabf4';
