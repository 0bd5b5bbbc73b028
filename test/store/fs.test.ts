import { execFileSync } from 'node:child_process';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FsStore } from '../../src/store/fs.js';
import { collect, describeStoreConformance, expectStoreError } from './conformance.js';

async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'cdp-fs-store-'));
}

describeStoreConformance('FsStore', async () => {
  const dir = await tempDir();
  // A root that does not exist yet: the first put creates it.
  return { store: new FsStore(join(dir, 'repo')), cleanup: () => rm(dir, { recursive: true, force: true }) };
}, { conditionalWrites: true, byteOrderListing: true, retentionWithoutLock: 'refused', listVersions: true });

describe('FsStore', () => {
  let dir: string;
  let store: FsStore;
  beforeEach(async () => {
    dir = await tempDir();
    store = new FsStore(dir);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('leaves no temp files behind after puts, including refused ifAbsent puts', async () => {
    await store.put('a/b', new Uint8Array([1]));
    await store.put('a/b', new Uint8Array([2]));
    await store.put('a/c', new Uint8Array([3]), { ifAbsent: true });
    await expectStoreError(store.put('a/c', new Uint8Array([4]), { ifAbsent: true }), 'exists');
    const files = await readdir(dir, { recursive: true });
    expect(files.filter((f) => f.includes('.tmp-'))).toEqual([]);
    expect(files.sort()).toEqual(['a', 'a/b', 'a/c']);
  });

  it('refuses keys that escape or are not plain relative paths', async () => {
    for (const key of ['../escape', 'a/../../b', '/abs', 'a//b', 'a/', '', '.', 'a/./b', '.tmp-x']) {
      const error = await expectStoreError(store.put(key, new Uint8Array(1)), 'permanent');
      expect(error.message).toContain('invalid key');
      await expectStoreError(store.get(key), 'permanent');
    }
  });

  it('follows no symbolic link inside the root: a linked object or directory is no object, and is never written through', async () => {
    const outside = await tempDir();
    try {
      const { symlink, writeFile, readFile } = await import('node:fs/promises');
      await writeFile(join(outside, 'secret'), 'outside the repository');
      await store.put('packs/real', new Uint8Array([1]));
      // A link where an object should be.
      await symlink(join(outside, 'secret'), join(dir, 'packs', 'linked'));
      const error = await expectStoreError(store.get('packs/linked'), 'not-found');
      expect(error.message).toMatch(/packs\/linked in file:.* does not exist \(it is a symbolic link, which the local store does not follow: remove it\)/);
      await expectStoreError(store.get('packs/linked', { range: { offset: 0, length: 3 } }), 'not-found');
      expect(await store.head('packs/linked')).toBeUndefined();
      // A linked directory.
      await symlink(outside, join(dir, 'deltas'));
      await expectStoreError(store.get('deltas/secret'), 'not-found');
      expect(await store.head('deltas/secret')).toBeUndefined();
      const refused = await expectStoreError(store.put('deltas/new', new Uint8Array([2])), 'permanent');
      expect(refused.message).toMatch(/cannot write deltas\/new: deltas in file:.* is a symbolic link, which the local store does not follow: remove it/);
      await store.delete('deltas/secret');
      expect(await collect(store.list(''))).toEqual([{ key: 'packs/real', size: 1 }]);
      expect((await readdir(outside)).sort()).toEqual(['secret']);
      expect(await readFile(join(outside, 'secret'), 'utf8')).toBe('outside the repository');
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  it('refuses a FIFO or a socket planted where an object should be, at once, naming the key: get, ranged get, head and list', async () => {
    await store.put('packs/real', new Uint8Array([1]));
    execFileSync('mkfifo', [join(dir, 'packs', 'fifo')]);
    const socketServer = createServer();
    await new Promise<void>((resolve) => socketServer.listen(join(dir, 'packs', 'socket'), resolve));
    try {
      for (const [key, what] of [['packs/fifo', 'a FIFO \\(named pipe\\)'], ['packs/socket', 'a socket']] as const) {
        const calls: Array<[string, () => Promise<unknown>]> = [
          ['get', () => store.get(key)],
          ['ranged get', () => store.get(key, { range: { offset: 0, length: 1 } })],
          ['head', () => store.head(key)],
          ['list', () => collect(store.list(key))],
        ];
        for (const [name, call] of calls) {
          const error = await expectStoreError(call(), 'permanent');
          expect(error.key, name).toBe(key);
          expect(error.message, name).toMatch(new RegExp(`^${key} in file://\\S+ is ${what}, not a regular file: the repository is damaged \\(the local store keeps objects only as regular files\\); remove it$`));
        }
      }
      // Listings that would not include them are unaffected; deleting them works.
      expect(await collect(store.list('packs/r'))).toEqual([{ key: 'packs/real', size: 1 }]);
      await expectStoreError(collect(store.list('')), 'permanent');
    } finally {
      await new Promise((resolve) => socketServer.close(resolve));
    }
    await store.delete('packs/fifo');
    await rm(join(dir, 'packs', 'socket'), { force: true });
    expect(await collect(store.list(''))).toEqual([{ key: 'packs/real', size: 1 }]);
  });

  it('skips temp files in listings', async () => {
    await store.put('d/x', new Uint8Array(1));
    const { writeFile } = await import('node:fs/promises');
    await writeFile(join(dir, 'd', '.tmp-crashed'), 'partial');
    expect(await collect(store.list(''))).toEqual([{ key: 'd/x', size: 1 }]);
  });

  it('reports its location as a file URL and lists an absent root as empty', async () => {
    expect(store.location).toBe('file://' + dir);
    expect(await collect(new FsStore(join(dir, 'nope')).list(''))).toEqual([]);
  });

  it('maps a path collision between a file and a directory to permanent', async () => {
    await store.put('f', new Uint8Array(1));
    await expectStoreError(store.put('f/g', new Uint8Array(1)), 'permanent');
    await expectStoreError(store.get('f/g'), 'not-found');
  });
});
