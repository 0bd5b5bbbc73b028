import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError, UsageError } from '../../src/errors.js';
import { openStore, parseRepoUrl } from '../../src/store/open.js';

describe('parseRepoUrl', () => {
  it.each([
    ['s3://bucket', { kind: 's3', bucket: 'bucket', prefix: '' }],
    ['s3://bucket/', { kind: 's3', bucket: 'bucket', prefix: '' }],
    ['s3://bucket/a/b/', { kind: 's3', bucket: 'bucket', prefix: 'a/b' }],
    ['S3://bucket/p', { kind: 's3', bucket: 'bucket', prefix: 'p' }],
    ['file:///srv/repo', { kind: 'fs', path: '/srv/repo' }],
    ['file:///srv/with%20space', { kind: 'fs', path: '/srv/with space' }],
    ['/abs/path', { kind: 'fs', path: '/abs/path' }],
    ['rel/path', { kind: 'fs', path: '/cwd/rel/path' }],
    ['odd:name', { kind: 'fs', path: '/cwd/odd:name' }],
  ])('%s', (url, expected) => {
    expect(parseRepoUrl(url, '/cwd')).toEqual(expected);
  });

  it.each(['', 's3://', 's3:///prefix', 'http://host/x', 'gs://bucket/x', 'file://otherhost/x'])('refuses %j with the accepted forms', (url) => {
    expect(() => parseRepoUrl(url)).toThrow(UsageError);
  });

  it.each(['s3://bkt/../escape', 's3://bkt/a/../../escape', 's3://bkt/./x', 's3://bkt/a//b', 's3://bkt//a', 's3://bkt/a/b//', 's3://bkt/..', 's3://../x', 's3://./x', 's3://b%2fx/y'])(
    'refuses %j: a prefix that would leave the repository, or not a bucket name',
    (url) => {
      expect(() => parseRepoUrl(url)).toThrow(UsageError);
      expect(() => parseRepoUrl(url)).toThrow(/bad S3 repository .*: (the prefix may not have empty, '\.' or '\.\.' segments|the bucket name may hold only)/);
    },
  );

  it('names the accepted forms for an unknown scheme', () => {
    expect(() => parseRepoUrl('gs://b')).toThrow(/s3:\/\/bucket\[\/prefix\], file:\/\/\/absolute\/path, or a directory path/);
  });
});

describe('openStore', () => {
  it('opens a working store for a directory path and reports its location', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cdp-open-'));
    try {
      const store = openStore(dir, { concurrency: 2, retry: { attempts: 2 } });
      expect(store.location).toBe('file://' + resolve(dir));
      await store.put('k', new Uint8Array([1, 2, 3]));
      expect(Array.from(await store.get('k'))).toEqual([1, 2, 3]);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('refuses bad timeout or retry options up front, for either kind of store', () => {
    for (const url of ['/tmp/x', 's3://bucket/p']) {
      expect(() => openStore(url, { timeout: { baseMs: 0 } })).toThrow(/request timeout 0 ms must be a finite number above 0/);
      expect(() => openStore(url, { timeout: { minBytesPerSecond: -1 } })).toThrow(InvalidArgumentError);
      expect(() => openStore(url, { retry: { attempts: 0 } })).toThrow(/retry attempts 0/);
    }
  });

  it('opens an S3 store without contacting the server', () => {
    const store = openStore('s3://bucket/some/prefix', { endpoint: 'http://127.0.0.1:1', region: 'us-east-1' });
    expect(store.location).toBe('s3://bucket/some/prefix');
  });
});
