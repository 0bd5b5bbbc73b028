// FileExport: positional I/O on a regular file, and served by NbdServer to nbdcopy.

import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { FileExport } from '../../src/nbd/file-export.js';
import { dropPrefix } from '../../src/util/positional-io.js';
import { NbdServer } from '../../src/nbd/server.js';
import { itNeeding } from '../helpers/requirements.js';
import { MiB, runTool } from './helpers.js';

let dir: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-nbd-file-'));
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('FileExport', () => {
  it('reads, writes, zeroes and trims at offsets, with the file size as its size', async () => {
    const path = join(dir, 'a.img');
    const initial = randomBytes(3 * MiB + 123);
    await writeFile(path, initial);
    const exp = await FileExport.open(path, { name: 'a', description: 'file a' });
    try {
      expect([exp.name, exp.description, exp.size, exp.readOnly]).toEqual(['a', 'file a', initial.length, false]);
      expect(Buffer.from(await exp.read(1000, 5000)).equals(initial.subarray(1000, 6000))).toBe(true);
      const bytes = randomBytes(70_000);
      await exp.write(12345, bytes, true);
      await exp.writeZeroes(MiB - 10, MiB + 20, false); // spans the 1 MiB zero chunk
      await exp.trim(3 * MiB, 123, true);
      await exp.flush();
      const expected = Buffer.from(initial);
      bytes.copy(expected, 12345);
      expected.fill(0, MiB - 10, 2 * MiB + 10);
      expected.fill(0, 3 * MiB);
      expect((await readFile(path)).equals(expected)).toBe(true);
      expect(Buffer.from(await exp.read(0, expected.length)).equals(expected)).toBe(true);
    } finally {
      await exp.close();
      await exp.close(); // idempotent
    }
  });

  it('writev writes the pieces in order; readInto fills the whole target', async () => {
    const path = join(dir, 'v.img');
    await writeFile(path, Buffer.alloc(MiB));
    const exp = await FileExport.open(path);
    try {
      const pieces = [randomBytes(1), randomBytes(70_000), Buffer.alloc(0), randomBytes(4096), randomBytes(3)];
      // More pieces than one writev call takes (IOV_MAX is 1024): the rest goes in later calls.
      const many = Array.from({ length: 1500 }, (_, i) => Buffer.from([i & 0xff]));
      await exp.writev(100, pieces, true);
      await exp.writev(200_000, many, false);
      const expected = Buffer.alloc(MiB);
      Buffer.concat(pieces).copy(expected, 100);
      Buffer.concat(many).copy(expected, 200_000);
      expect((await readFile(path)).equals(expected)).toBe(true);
      const target = Buffer.alloc(300_000);
      await exp.readInto(1000, target);
      expect(target.equals(expected.subarray(1000, 301_000))).toBe(true);
    } finally {
      await exp.close();
    }
  });

  it('dropPrefix drops whole and partial pieces after a short write', () => {
    const pieces = [Buffer.from('abc'), Buffer.from('de'), Buffer.from('fghi')];
    expect(dropPrefix(pieces, 0).map(String)).toEqual(['abc', 'de', 'fghi']);
    expect(dropPrefix(pieces, 3).map(String)).toEqual(['de', 'fghi']);
    expect(dropPrefix(pieces, 4).map(String)).toEqual(['e', 'fghi']);
    expect(dropPrefix(pieces, 8).map(String)).toEqual(['i']);
    expect(dropPrefix(pieces, 9)).toEqual([]);
  });

  it('opens read-only and refuses what is not a regular file', async () => {
    const path = join(dir, 'b.img');
    await writeFile(path, Buffer.alloc(4096, 1));
    const exp = await FileExport.open(path, { readOnly: true });
    expect(exp.readOnly).toBe(true);
    await expect(exp.write(0, Buffer.alloc(1), false)).rejects.toThrow(/EBADF/);
    await exp.close();
    await expect(FileExport.open('/dev/null')).rejects.toThrow(InvalidArgumentError);
    await expect(FileExport.open(dir, { readOnly: true })).rejects.toThrow(/not a regular file/);
    await expect(FileExport.open(join(dir, 'missing.img'))).rejects.toThrow(/ENOENT/);
  });

  itNeeding('nbdcopy')('is served bit-exact to nbdcopy', async () => {
    const path = join(dir, 'served.img');
    const source = join(dir, 'source.img');
    const back = join(dir, 'back.img');
    const bytes = randomBytes(5 * MiB);
    await writeFile(path, Buffer.alloc(bytes.length));
    await writeFile(source, bytes);
    const exp = await FileExport.open(path);
    const server = new NbdServer({ exports: [exp] });
    const { port } = await server.listen('127.0.0.1', 0);
    try {
      expect((await runTool('nbdcopy', ['--flush', source, `nbd://127.0.0.1:${port}/`])).code).toBe(0);
      expect((await readFile(path)).equals(bytes)).toBe(true);
      expect((await runTool('nbdcopy', [`nbd://127.0.0.1:${port}/`, back])).code).toBe(0);
      expect((await readFile(back)).equals(bytes)).toBe(true);
    } finally {
      await server.close({ drain: true });
      await exp.close();
    }
  });
});
