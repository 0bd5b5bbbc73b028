// NbdServer against the real Debian NBD clients (qemu-io, qemu-img, nbdinfo, nbdcopy) over TCP on
// 127.0.0.1, backed by in-memory exports. A test whose client binary is missing is skipped and
// says which binary; in CI, which installs them all, it runs (and fails).

import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, beforeEach, describe, expect } from 'vitest';
import { NbdServer, type NbdErrorInfo } from '../../src/nbd/server.js';
import { itNeeding } from '../helpers/requirements.js';
import { KiB, MemoryExport, MiB, runTool } from './helpers.js';

let server: NbdServer;
let port: number;
let dir: string;
let scratch: MemoryExport;
let named: MemoryExport;
let readOnly: MemoryExport;
const roContents = randomBytes(1 * MiB);
const errors: Array<{ error: Error; info: NbdErrorInfo }> = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-nbd-clients-'));
  scratch = new MemoryExport(8 * MiB, { name: '', description: 'scratch disk' });
  named = new MemoryExport(6 * MiB, { name: 'disk2' });
  readOnly = new MemoryExport(0, { name: 'ro', readOnly: true, contents: roContents, description: 'a point in time' });
  server = new NbdServer({ exports: [scratch, named, readOnly], onError: (error, info) => errors.push({ error, info }) });
  ({ port } = await server.listen('127.0.0.1', 0));
});

afterAll(async () => {
  await server?.close({ drain: false });
  await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  errors.length = 0;
});

function uri(name = ''): string {
  return `nbd://127.0.0.1:${port}/${name}`;
}

/** qemu-io on the export with each of `commands`; -f raw and -t none as design.md notes. */
function qemuIo(name: string, commands: string[]): ReturnType<typeof runTool> {
  return runTool('qemu-io', ['-f', 'raw', '-t', 'none', ...commands.flatMap((c) => ['-c', c]), uri(name)]);
}

describe('qemu-io and qemu-img', () => {
  itNeeding('qemu-io', 'qemu-img')('write patterns, read them back, discard and zero; qemu-img compare finds the export identical',
    async () => {
      scratch.data.fill(0);
      const expected = Buffer.alloc(scratch.size);
      const result = await qemuIo('', [
        'write -P 0xab 0 64k',
        'write -P 0xcd 1M 128k',
        'write -P 0x5a 100000 1000', // unaligned: the server advertises a minimum block size of 1
        'write -P 0xee 7M 1M', // up to the last byte
        'read -P 0xab 0 64k',
        'read -P 0xcd 1M 128k',
        'read -P 0x5a 100000 1000',
        'discard 16k 16k',
        'read -P 0 16k 16k',
        'write -z 1M 64k',
        'read -P 0 1M 64k',
        'read -P 0xcd 1088k 64k',
        'flush',
      ]);
      expect(result.code, result.stderr + result.stdout).toBe(0);
      expect(result.stdout).not.toMatch(/verification failed|error/i);
      expect(result.stdout).toMatch(/discard 16384\/16384 bytes at offset 16384/);
      expected.fill(0xab, 0, 64 * KiB);
      expected.fill(0xcd, MiB, MiB + 128 * KiB);
      expected.fill(0x5a, 100000, 101000);
      expected.fill(0xee, 7 * MiB, 8 * MiB);
      expected.fill(0, 16 * KiB, 32 * KiB);
      expected.fill(0, MiB, MiB + 64 * KiB);
      expect(scratch.data.equals(expected)).toBe(true);
      const ops = new Set(scratch.operations.map((o) => o.op));
      for (const op of ['read', 'write', 'trim', 'writeZeroes', 'flush'] as const) expect(ops).toContain(op);

      const image = join(dir, 'expected.img');
      await writeFile(image, expected);
      const same = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, uri('')]);
      expect(same.code, same.stderr).toBe(0);
      expect(same.stdout).toMatch(/Images are identical/);

      // And compare does read through the server: one changed byte is found.
      expected[5 * MiB + 3] = 1;
      await writeFile(image, expected);
      const differ = await runTool('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', image, uri('')]);
      expect(differ.code).toBe(1);
      expect(differ.stdout).toMatch(/Content mismatch at offset 52428\d\d/);
      expect(errors).toEqual([]);
    },
  );

  itNeeding('qemu-io')('a read-only export refuses writes with a permission error', async () => {
    const result = await qemuIo('ro', ['write -P 0xab 0 64k']);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/Permission denied|read-only/i);
    expect(readOnly.data.equals(roContents)).toBe(true);
    // Reading it is fine.
    const read = await runTool('qemu-io', ['-r', '-f', 'raw', '-t', 'none', '-c', 'read 0 1M', uri('ro')]);
    expect(read.code, read.stderr).toBe(0);
    expect(readOnly.operations.some((o) => o.op === 'read')).toBe(true);
  });

  itNeeding('qemu-io')('an unknown export name fails the client', async () => {
    const result = await qemuIo('no-such-export', ['read 0 4k']);
    expect(result.code).not.toBe(0);
    // NBD_REP_ERR_UNKNOWN, with the server's message passed on.
    expect(result.stderr).toMatch(/Requested export not available\s+server reported: unknown export 'no-such-export'/);
  });
});

describe('nbdinfo', () => {
  itNeeding('nbdinfo')('lists every export with its size and description', async () => {
    const result = await runTool('nbdinfo', ['--list', uri()]);
    expect(result.code, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/export="":\n\tdescription: scratch disk\n\texport-size: 8388608 /);
    expect(result.stdout).toMatch(/export="disk2":\n(\t.*\n)*?\texport-size: 6291456 /);
    expect(result.stdout).toMatch(/export="ro":\n\tdescription: a point in time\n\texport-size: 1048576 /);
    expect(result.stdout).toMatch(/block_size_maximum: 33554432/);
  });

  itNeeding('nbdinfo')('describes a named export: size, read-only, flush and multi-conn', async () => {
    const result = await runTool('nbdinfo', ['--json', uri('ro')]);
    expect(result.code, result.stderr).toBe(0);
    const info = JSON.parse(result.stdout) as { exports: Array<Record<string, unknown>> };
    expect(info.exports).toHaveLength(1);
    expect(info.exports[0]).toMatchObject({
      'export-name': 'ro',
      'export-size': 1048576,
      is_read_only: true,
      can_flush: true,
      can_fua: true,
      can_multi_conn: true,
      can_trim: false,
      block_size_minimum: 1,
      block_size_preferred: 4096,
      block_size_maximum: 32 * MiB,
    });
    const size = await runTool('nbdinfo', ['--size', uri('disk2')]);
    expect(size.stdout.trim()).toBe('6291456');
  });

  itNeeding('nbdinfo')('an unknown export name fails nbdinfo', async () => {
    const result = await runTool('nbdinfo', [uri('nope')]);
    expect(result.code).not.toBe(0);
    // NBD_REP_ERR_UNKNOWN, which libnbd reports as ENOENT.
    expect(result.stderr).toMatch(/opt_go.*No such file or directory for export: nope/);
  });
});

describe('nbdcopy', () => {
  itNeeding('nbdcopy')('copies a file into an export and back out bit-exact, over several connections', async () => {
    const source = join(dir, 'source.img');
    const back = join(dir, 'back.img');
    const bytes = randomBytes(named.size);
    // Some zero runs, which nbdcopy sends as zero requests instead of data.
    bytes.fill(0, MiB, 2 * MiB);
    await writeFile(source, bytes);
    named.data.fill(0x77);
    const accepted = server.stats.accepted;
    const into = await runTool('nbdcopy', ['--flush', source, uri('disk2')]);
    expect(into.code, into.stderr).toBe(0);
    expect(named.data.equals(bytes)).toBe(true);
    // The server offers multi-conn, so nbdcopy spreads the copy over several connections at once.
    expect(server.stats.accepted - accepted).toBeGreaterThan(1);
    expect(named.peakInFlight).toBeGreaterThan(1);
    const out = await runTool('nbdcopy', [uri('disk2'), back]);
    expect(out.code, out.stderr).toBe(0);
    expect((await readFile(back)).equals(bytes)).toBe(true);
    expect(errors).toEqual([]);
  });

  itNeeding('nbdcopy', 'qemu-io')('serves several clients at once', async () => {
    const source = join(dir, 'parallel.img');
    const bytes = randomBytes(named.size);
    await writeFile(source, bytes);
    const results = await Promise.all([
      runTool('nbdcopy', [source, uri('disk2')]),
      runTool('nbdcopy', [uri('ro'), join(dir, 'ro-copy.img')]),
      qemuIo('', ['write -P 0x42 2M 1M', 'read -P 0x42 2M 1M']),
      runTool('nbdinfo', ['--list', uri()]),
    ]);
    for (const r of results) expect(r.code, r.stderr).toBe(0);
    expect(named.data.equals(bytes)).toBe(true);
    expect((await readFile(join(dir, 'ro-copy.img'))).equals(roContents)).toBe(true);
    expect(scratch.data.subarray(2 * MiB, 3 * MiB).every((b) => b === 0x42)).toBe(true);
  });
});
