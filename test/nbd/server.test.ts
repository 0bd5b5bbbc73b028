// NbdServer at the byte level: a raw client does the handshake itself and sends what real clients
// never do (bad ranges, unknown commands and flags, oversized writes, bad magic), pipelines
// requests, and checks backpressure, DISC and draining shutdown.

import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CdpError, InvalidArgumentError } from '../../src/errors.js';
import * as P from '../../src/nbd/protocol.js';
import { NbdProtocolError, NbdServer, slabBytesFor, type NbdErrorInfo, type NbdServerOptions } from '../../src/nbd/server.js';
import { NbdRequestError } from '../../src/nbd/types.js';
import { missingBinaries, skipOutsideCi } from '../helpers/requirements.js';
import { quiesce, turns, waitUntil } from '../helpers/wait.js';
import { KiB, MemoryExport, MiB, RawClient, runTool } from './helpers.js';

const NBDINFO = !skipOutsideCi(missingBinaries('nbdinfo')); // CI installs it: there the check runs (and fails without it)

interface Fixture {
  server: NbdServer;
  port: number;
  disk: MemoryExport;
  ro: MemoryExport;
  errors: Array<{ error: Error; info: NbdErrorInfo }>;
  logs: string[];
}

const open: NbdServer[] = [];
const clients: RawClient[] = [];

/** How the servers of the current block read their sockets (every test runs both ways). */
let readIntoSlabs = true;

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  const servers = open.splice(0);
  await Promise.all(servers.map((s) => s.close({ drain: false })));
  // Every receive slab is back once the connections are gone: no request or queue leaked one.
  for (const s of servers) expect(s.receiveSlabBytes).toBe(0);
});

async function start(options: Partial<NbdServerOptions> & { diskSize?: number; vectored?: boolean; views?: boolean } = {}): Promise<Fixture> {
  const disk = new MemoryExport(options.diskSize ?? 4 * MiB, { name: '', description: 'the disk', vectored: options.vectored ?? false, views: options.views ?? false });
  const ro = new MemoryExport(0, { name: 'ro', readOnly: true, contents: randomBytes(256 * KiB) });
  const errors: Fixture['errors'] = [];
  const logs: string[] = [];
  const server = new NbdServer({
    exports: options.exports ?? [disk, ro],
    readIntoSlabs,
    onError: (error, info) => errors.push({ error, info }),
    log: (line) => logs.push(line),
    ...(options.maxQueuedBytes === undefined ? {} : { maxQueuedBytes: options.maxQueuedBytes }),
    ...(options.maxRequestBytes === undefined ? {} : { maxRequestBytes: options.maxRequestBytes }),
  });
  open.push(server);
  const { port } = await server.listen('127.0.0.1', 0);
  return { server, port, disk, ro, errors, logs };
}

async function connect(port: number, name = ''): Promise<RawClient> {
  const { client } = await RawClient.open(port, name);
  clients.push(client);
  return client;
}

async function rawConnect(port: number): Promise<RawClient> {
  const client = await RawClient.connect(port);
  clients.push(client);
  return client;
}

function pattern(length: number, seed: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = (i * 31 + seed * 7) & 0xff;
  return out;
}

/** Resolves when the server has closed the client's connection (the test's timeout bounds it). */
async function isClosed(client: RawClient): Promise<boolean> {
  await client.closed;
  return true;
}

/** Whether the connection has closed by now, without waiting. */
function closedNow(client: RawClient): () => boolean {
  let closed = false;
  void client.closed.then(() => (closed = true));
  return () => closed;
}

describe.each([
  ['reading into receive slabs', true],
  ["reading with 'data' events", false],
])('%s', (_mode, intoSlabs) => {
  beforeAll(() => {
    readIntoSlabs = intoSlabs;
  });

  it('each connection reads the way the server was told to', async () => {
    const { port, server } = await start();
    await connect(port);
    await connect(port);
    expect(server.stats.readingIntoSlabs).toBe(intoSlabs ? 2 : 0);
  });

  describe('handshake', () => {
    it('greets with fixed newstyle and no-zeroes, and NBD_OPT_EXPORT_NAME honours the client flags', async () => {
      const { port, disk } = await start();
      disk.data.write('hello', 0);
      for (const noZeroes of [true, false]) {
        const client = await rawConnect(port);
        expect(await client.greet(P.FLAG_C_FIXED_NEWSTYLE | (noZeroes ? P.FLAG_C_NO_ZEROES : 0))).toBe(
          P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES,
        );
        client.sendOption(P.OPT_EXPORT_NAME, Buffer.from(''));
        const reply = await client.read(noZeroes ? 10 : 134);
        expect(Number(reply.readBigUInt64BE(0))).toBe(disk.size);
        expect(reply.readUInt16BE(8)).toBe(
          P.TFLAG_HAS_FLAGS | P.TFLAG_SEND_FLUSH | P.TFLAG_SEND_FUA | P.TFLAG_SEND_TRIM | P.TFLAG_SEND_WRITE_ZEROES | P.TFLAG_CAN_MULTI_CONN,
        );
        if (!noZeroes) expect(reply.subarray(10).every((b) => b === 0)).toBe(true);
        // The very next bytes are transmission phase.
        const r = await client.request(P.CMD_READ, 1, 0, 5);
        expect(r.error).toBe(0);
        expect(r.data?.toString()).toBe('hello');
      }
    });

    it('answers NBD_OPT_INFO with the export, name, description and block sizes, then NBD_OPT_GO enters transmission', async () => {
      const { port } = await start({ maxRequestBytes: 1 * MiB });
      const client = await rawConnect(port);
      await client.greet();
      const info = await client.info(P.OPT_INFO, '', [P.INFO_NAME, P.INFO_DESCRIPTION, P.INFO_BLOCK_SIZE]);
      expect(info.final.type).toBe(P.REP_ACK);
      const byType = new Map(info.replies.map((r) => [r.data.readUInt16BE(0), r.data]));
      expect(Number(byType.get(P.INFO_EXPORT)!.readBigUInt64BE(2))).toBe(4 * MiB);
      expect(byType.get(P.INFO_NAME)!.toString('utf8', 2)).toBe('');
      expect(byType.get(P.INFO_DESCRIPTION)!.toString('utf8', 2)).toBe('the disk');
      const sizes = byType.get(P.INFO_BLOCK_SIZE)!;
      expect([sizes.readUInt32BE(2), sizes.readUInt32BE(6), sizes.readUInt32BE(10)]).toEqual([1, 4096, MiB]);
      // Read-only exports say so.
      const ro = await client.info(P.OPT_INFO, 'ro', []);
      const flags = ro.replies.find((r) => r.data.readUInt16BE(0) === P.INFO_EXPORT)!.data.readUInt16BE(10);
      expect(flags & P.TFLAG_READ_ONLY).toBe(P.TFLAG_READ_ONLY);
      expect(flags & (P.TFLAG_SEND_TRIM | P.TFLAG_SEND_WRITE_ZEROES)).toBe(0);
      const go = await client.go('');
      expect(go.size).toBe(4 * MiB);
      expect((await client.request(P.CMD_FLUSH, 2, 0, 0)).error).toBe(0);
    });

    it('lists exports, refuses list data, and leaves every other option unsupported', async () => {
      const { port } = await start();
      const client = await rawConnect(port);
      await client.greet();
      client.sendOption(P.OPT_LIST);
      const names: string[] = [];
      for (;;) {
        const reply = await client.readOptionReply();
        if (reply.type === P.REP_ACK) break;
        expect(reply.type).toBe(P.REP_SERVER);
        const length = reply.data.readUInt32BE(0);
        names.push(reply.data.toString('utf8', 4, 4 + length));
      }
      expect(names).toEqual(['', 'ro']);
      client.sendOption(P.OPT_LIST, Buffer.from('x'));
      expect((await client.readOptionReply()).type).toBe(P.REP_ERR_INVALID);
      for (const option of [P.OPT_STRUCTURED_REPLY, P.OPT_STARTTLS, P.OPT_LIST_META_CONTEXT, P.OPT_SET_META_CONTEXT, 11, 999]) {
        client.sendOption(option, Buffer.alloc(option === 999 ? 7 : 0));
        const reply = await client.readOptionReply();
        expect(reply).toMatchObject({ option, type: P.REP_ERR_UNSUP });
      }
      // Option data too large to hold is skipped, not buffered, and refused.
      client.sendOption(999, Buffer.alloc(200 * KiB));
      expect((await client.readOptionReply()).type).toBe(P.REP_ERR_TOO_BIG);
      // Malformed NBD_OPT_GO data.
      client.sendOption(P.OPT_GO, Buffer.from([0, 0, 0, 9, 0, 0]));
      expect((await client.readOptionReply()).type).toBe(P.REP_ERR_INVALID);
      // Still negotiating fine.
      expect((await client.go('ro')).size).toBe(256 * KiB);
    });

    it('an unknown export: NBD_REP_ERR_UNKNOWN for NBD_OPT_GO (the client may go on), a closed connection for NBD_OPT_EXPORT_NAME', async () => {
      const { port, errors } = await start();
      const client = await rawConnect(port);
      await client.greet();
      const go = await client.info(P.OPT_GO, 'nope', []);
      expect(go.replies).toEqual([]);
      expect(go.final.type).toBe(P.REP_ERR_UNKNOWN);
      expect(go.final.data.toString()).toBe("unknown export 'nope'");
      expect((await client.go('')).size).toBe(4 * MiB);

      const other = await rawConnect(port);
      await other.greet();
      other.sendOption(P.OPT_EXPORT_NAME, Buffer.from('nope'));
      expect(await isClosed(other)).toBe(true);
      expect(errors.map((e) => [e.error.message, e.info.fatal])).toEqual([["unknown export 'nope'", true]]);
    });

    it('closes the connection on unknown client flags or a bad option magic, and after NBD_OPT_ABORT', async () => {
      const { port, errors, server } = await start();
      const a = await rawConnect(port);
      await a.greet(0x80);
      expect(await isClosed(a)).toBe(true);

      const b = await rawConnect(port);
      await b.greet();
      b.write(Buffer.from('NOTMAGIC\0\0\0\x07\0\0\0\0', 'latin1'));
      expect(await isClosed(b)).toBe(true);

      const c = await rawConnect(port);
      await c.greet();
      c.sendOption(P.OPT_ABORT);
      expect((await c.readOptionReply()).type).toBe(P.REP_ACK);
      c.socket.end();
      expect(await isClosed(c)).toBe(true);

      expect(errors.map((e) => e.error.message)).toEqual(['unknown client flags 0x80', 'bad option magic']);
      expect(errors.every((e) => e.error instanceof NbdProtocolError && e.info.fatal)).toBe(true);
      await waitUntil(() => server.connections === 0, 'connections to close');
    });
  });

  describe('requests', () => {
    it('passes reads, writes, flushes, trims and zeroes with FUA to the backend', async () => {
      const { port, disk } = await start();
      const client = await connect(port);
      const bytes = pattern(12 * KiB, 1);
      expect((await client.request(P.CMD_WRITE, 1, 4096, bytes.length, P.CMD_FLAG_FUA, bytes)).error).toBe(0);
      expect(disk.data.subarray(4096, 4096 + bytes.length).equals(bytes)).toBe(true);
      const read = await client.request(P.CMD_READ, 2, 4096, bytes.length);
      expect(read.error).toBe(0);
      expect(read.data!.equals(bytes)).toBe(true);
      expect((await client.request(P.CMD_TRIM, 3, 4096, 4096, P.CMD_FLAG_FUA)).error).toBe(0);
      expect((await client.request(P.CMD_WRITE_ZEROES, 4, 8192, 4096, P.CMD_FLAG_NO_HOLE)).error).toBe(0);
      expect((await client.request(P.CMD_FLUSH, 5, 0, 0)).error).toBe(0);
      expect(disk.data.subarray(4096, 12288).every((b) => b === 0)).toBe(true);
      expect(disk.data.subarray(12288, 16384).equals(bytes.subarray(8192))).toBe(true);
      // A whole-disk zero request is fine (its length is not a payload).
      expect((await client.request(P.CMD_WRITE_ZEROES, 6, 0, disk.size)).error).toBe(0);
      expect(disk.operations).toEqual([
        { op: 'write', offset: 4096, length: 12288, fua: true },
        { op: 'read', offset: 4096, length: 12288 },
        { op: 'trim', offset: 4096, length: 4096, fua: true },
        { op: 'writeZeroes', offset: 8192, length: 4096, fua: false },
        { op: 'flush' },
        { op: 'writeZeroes', offset: 0, length: disk.size, fua: false },
      ]);
    });

    it('answers zero-length requests without the backend', async () => {
      const { port, disk } = await start();
      const client = await connect(port);
      for (const command of [P.CMD_READ, P.CMD_WRITE, P.CMD_TRIM, P.CMD_WRITE_ZEROES]) {
        const reply = await client.request(command, command, disk.size, 0);
        expect(reply).toMatchObject({ error: 0 });
        expect(reply.data).toBeUndefined();
      }
      expect(disk.operations).toEqual([]);
    });

    it('refuses out-of-range requests, consuming a write payload, and the connection keeps working', async () => {
      const { port, disk, errors } = await start();
      const client = await connect(port);
      const size = disk.size;
      expect((await client.request(P.CMD_READ, 1, size - 4096, 8192)).error).toBe(P.ERRNO.EINVAL);
      expect((await client.request(P.CMD_READ, 2, size + 1, 0)).error).toBe(P.ERRNO.EINVAL);
      expect((await client.request(P.CMD_READ, 3, 2 ** 63, 512)).error).toBe(P.ERRNO.EINVAL);
      // Writes past the end get ENOSPC (as the protocol asks); the payload is read and dropped.
      const junk = Buffer.alloc(64 * KiB, 0xee);
      expect((await client.request(P.CMD_WRITE, 4, size - 4096, junk.length, 0, junk)).error).toBe(P.ERRNO.ENOSPC);
      expect((await client.request(P.CMD_WRITE_ZEROES, 5, size, 1)).error).toBe(P.ERRNO.ENOSPC);
      expect((await client.request(P.CMD_TRIM, 6, 0, size + 1)).error).toBe(P.ERRNO.EINVAL);
      const bytes = pattern(4096, 9);
      expect((await client.request(P.CMD_WRITE, 7, size - 4096, 4096, 0, bytes)).error).toBe(0);
      const read = await client.request(P.CMD_READ, 8, size - 4096, 4096);
      expect(read.data!.equals(bytes)).toBe(true);
      expect(disk.operations.map((o) => o.op)).toEqual(['write', 'read']);
      expect(errors).toEqual([]);
    });

    it('refuses unknown commands and flags that were not negotiated', async () => {
      const { port, disk } = await start();
      const client = await connect(port);
      for (const command of [P.CMD_CACHE, P.CMD_BLOCK_STATUS, 8, 99, 0xffff]) {
        expect((await client.request(command, command, 0, 4096)).error).toBe(P.ERRNO.EINVAL);
      }
      const cases: Array<[number, number]> = [
        [P.CMD_READ, P.CMD_FLAG_DF], // structured replies were not negotiated
        [P.CMD_READ, P.CMD_FLAG_NO_HOLE],
        [P.CMD_TRIM, P.CMD_FLAG_NO_HOLE],
        [P.CMD_WRITE_ZEROES, P.CMD_FLAG_FAST_ZERO],
        [P.CMD_FLUSH, P.CMD_FLAG_REQ_ONE],
        [P.CMD_READ, 0x8000],
      ];
      for (const [command, flags] of cases) expect((await client.request(command, 7, 0, 4096, flags)).error).toBe(P.ERRNO.EINVAL);
      // A write with a bad flag: its payload is still consumed.
      const bytes = pattern(8192, 3);
      expect((await client.request(P.CMD_WRITE, 8, 0, bytes.length, P.CMD_FLAG_DF, bytes)).error).toBe(P.ERRNO.EINVAL);
      expect((await client.request(P.CMD_WRITE, 9, 0, bytes.length, 0, bytes)).error).toBe(0);
      expect(disk.operations.map((o) => o.op)).toEqual(['write']);
    });

    it('refuses reads and writes larger than maxRequestBytes, skipping the write payload', async () => {
      const { port, disk } = await start({ maxRequestBytes: 64 * KiB });
      const client = await connect(port);
      expect((await client.request(P.CMD_READ, 1, 0, 64 * KiB + 1)).error).toBe(P.ERRNO.EINVAL);
      const big = Buffer.alloc(3 * MiB, 0xaa);
      expect((await client.request(P.CMD_WRITE, 2, 0, big.length, 0, big)).error).toBe(P.ERRNO.EINVAL);
      // Trim and zero lengths are not payloads: no maximum.
      expect((await client.request(P.CMD_TRIM, 3, 0, 3 * MiB)).error).toBe(0);
      const ok = pattern(64 * KiB, 4);
      expect((await client.request(P.CMD_WRITE, 4, 0, ok.length, 0, ok)).error).toBe(0);
      expect((await client.request(P.CMD_READ, 5, 0, ok.length)).data!.equals(ok)).toBe(true);
      expect(disk.data.subarray(64 * KiB, 3 * MiB).every((b) => b === 0)).toBe(true);
    });

    it('a read-only export answers EPERM to writes, trims and zeroes, and serves reads and flushes', async () => {
      const { port, ro } = await start();
      const client = await connect(port, 'ro');
      const bytes = pattern(16 * KiB, 5);
      expect((await client.request(P.CMD_WRITE, 1, 0, bytes.length, 0, bytes)).error).toBe(P.ERRNO.EPERM);
      expect((await client.request(P.CMD_TRIM, 2, 0, 4096)).error).toBe(P.ERRNO.EPERM);
      expect((await client.request(P.CMD_WRITE_ZEROES, 3, 0, 4096)).error).toBe(P.ERRNO.EPERM);
      expect((await client.request(P.CMD_FLUSH, 4, 0, 0)).error).toBe(0);
      const read = await client.request(P.CMD_READ, 5, 0, 4096);
      expect(read.data!.equals(ro.data.subarray(0, 4096))).toBe(true);
      expect(ro.operations.map((o) => o.op)).toEqual(['flush', 'read']);
    });

    it('turns backend errors into NBD errors (NbdRequestError.errno, EIO otherwise) and reports them', async () => {
      const { port, disk, errors } = await start();
      const client = await connect(port);
      disk.failWith = new NbdRequestError('ENOSPC', 'the cache is full');
      expect((await client.request(P.CMD_WRITE, 1, 0, 4, 0, Buffer.from('abcd'))).error).toBe(P.ERRNO.ENOSPC);
      disk.failWith = new Error('disk on fire');
      expect((await client.request(P.CMD_READ, 2, 0, 4096)).error).toBe(P.ERRNO.EIO);
      disk.failWith = undefined;
      expect((await client.request(P.CMD_READ, 3, 0, 4)).data).toEqual(Buffer.alloc(4));
      expect(errors.map((e) => [e.error.message, e.info.fatal, e.info.export])).toEqual([
        ['the cache is full', false, ''],
        ['disk on fire', false, ''],
      ]);
    });

    it('keeps handles as 8 opaque bytes', async () => {
      const { port } = await start();
      const client = await connect(port);
      const handle = Buffer.from([0xff, 0xfe, 0x00, 0x80, 0x7f, 0x01, 0xaa, 0x55]);
      const reply = await client.request(P.CMD_READ, handle, 0, 16);
      expect(reply.handle.equals(handle)).toBe(true);
      expect((await client.request(P.CMD_READ, handle, 1 << 30, 16)).handle.equals(handle)).toBe(true);
    });
  });

  describe('protocol violations', () => {
    it('a bad request magic closes only that connection; other clients keep working', async () => {
      const { port, disk, errors } = await start();
      disk.data.write('still here', 100);
      const good = await connect(port);
      const bad = await connect(port);
      expect((await bad.request(P.CMD_READ, 1, 0, 16)).error).toBe(0);
      const request = RawClient.request(P.CMD_READ, 2, 0, 16);
      request.writeUInt32BE(0xdeadbeef, 0);
      bad.write(request);
      expect(await isClosed(bad)).toBe(true);
      expect(errors.map((e) => [e.error.message, e.info.fatal])).toEqual([['bad request magic 0xdeadbeef', true]]);
      expect((await good.request(P.CMD_READ, 3, 100, 10)).data?.toString()).toBe('still here');
      if (NBDINFO) {
        const info = await runTool('nbdinfo', ['--size', `nbd://127.0.0.1:${port}/`]);
        expect(info.stdout.trim()).toBe(String(disk.size));
      }
    });

    it('a bad magic mid-pipeline drops that connection while its in-flight requests still settle', async () => {
      const { port, disk, server } = await start();
      const release = disk.hold();
      const client = await connect(port);
      client.send(P.CMD_WRITE, 1, 0, 4, 0, Buffer.from('abcd'));
      await waitUntil(() => disk.inFlight === 1, 'the write to reach the backend');
      client.write(Buffer.alloc(28, 0x41));
      expect(await isClosed(client)).toBe(true);
      let closed = false;
      const closing = server.close({ drain: false }).then(() => (closed = true));
      await turns();
      expect(closed).toBe(false); // close waits for the backend call it started
      release();
      await closing;
      expect(disk.data.toString('latin1', 0, 4)).toBe('abcd');
    });
  });

  describe('concurrency', () => {
    it('pipelines 64 requests sent back to back and answers each handle once', async () => {
      const { port, disk } = await start();
      const client = await connect(port);
      disk.data.set(pattern(64 * KiB, 77), MiB);
      const release = disk.hold();
      const batch: Buffer[] = [];
      for (let i = 0; i < 64; i++) {
        const handle = Buffer.alloc(8);
        handle.writeUInt32BE(0xc0de0000 + i, 0);
        handle.writeUInt32BE(i * 7919, 4);
        if (i % 2 === 0) {
          batch.push(RawClient.request(P.CMD_WRITE, handle, i * 4096, 4096, 0, pattern(4096, i)));
        } else {
          batch.push(RawClient.request(P.CMD_READ, handle, MiB + (i - 1) * 1024, 1024));
          client.expectRead(handle, 1024);
        }
      }
      client.write(Buffer.concat(batch)); // one burst
      await waitUntil(() => disk.inFlight === 64, 'all 64 requests to be in flight at once');
      release();
      const seen = new Map<string, Buffer | undefined>();
      for (let i = 0; i < 64; i++) {
        const reply = await client.reply();
        expect(reply.error).toBe(0);
        const key = reply.handle.toString('hex');
        expect(seen.has(key)).toBe(false);
        seen.set(key, reply.data);
      }
      expect(seen.size).toBe(64);
      for (let i = 0; i < 64; i++) {
        const handle = Buffer.alloc(8);
        handle.writeUInt32BE(0xc0de0000 + i, 0);
        handle.writeUInt32BE(i * 7919, 4);
        const data = seen.get(handle.toString('hex'));
        if (i % 2 === 0) {
          expect(data).toBeUndefined();
          expect(disk.data.subarray(i * 4096, (i + 1) * 4096).equals(pattern(4096, i))).toBe(true);
        } else {
          const start = (i - 1) * 1024;
          expect(data!.equals(pattern(64 * KiB, 77).subarray(start, start + 1024))).toBe(true);
        }
      }
    });

    it('replies out of order when later requests finish first', async () => {
      const { port, disk } = await start();
      const client = await connect(port);
      const releaseFirst = disk.hold();
      client.send(P.CMD_READ, 1, 0, 4096);
      await waitUntil(() => disk.inFlight === 1, 'the first read');
      disk.gate = undefined; // later requests pass; the first stays held
      client.send(P.CMD_READ, 2, 0, 4096);
      client.send(P.CMD_FLUSH, 3, 0, 0);
      expect((await client.reply()).handle.readUInt32BE(4)).toBe(2);
      expect((await client.reply()).handle.readUInt32BE(4)).toBe(3);
      releaseFirst();
      const first = await client.reply();
      expect(first.handle.readUInt32BE(4)).toBe(1);
      expect(first.data).toHaveLength(4096);
    });

    it('bounds memory with a slow backend: pauses the socket and never queues much more than maxQueuedBytes', async () => {
      const maxQueuedBytes = 256 * KiB;
      const maxRequestBytes = 64 * KiB;
      const { port, disk, server } = await start({ maxQueuedBytes, maxRequestBytes, diskSize: 8 * MiB });
      const release = disk.hold(); // a backend slower than the client: the budget fills
      const client = await connect(port);
      const count = 128;
      const payloads: Buffer[] = [];
      for (let i = 0; i < count; i++) payloads.push(RawClient.request(P.CMD_WRITE, i, i * 64 * KiB, 64 * KiB, 0, pattern(64 * KiB, i)));
      client.write(Buffer.concat(payloads)); // 8 MiB in one go
      await waitUntil(() => server.stats.pauses > 0, 'the server to pause the socket');
      expect(disk.inFlight).toBeLessThanOrEqual(maxQueuedBytes / (64 * KiB) + 1);
      release();
      for (let i = 0; i < count; i++) expect((await client.reply()).error).toBe(0);
      for (let i = 0; i < count; i++) expect(disk.data.subarray(i * 64 * KiB, (i + 1) * 64 * KiB).equals(pattern(64 * KiB, i))).toBe(true);
      expect(server.stats.pauses).toBeGreaterThan(0);
      // Budget, plus one request admitted at the edge and the message being received, plus slab
      // granularity (a read fills up to one receive slab; payloads pin whole slabs): far below the
      // 8 MiB the client sent.
      const slab = slabBytesFor(maxQueuedBytes);
      expect(server.stats.peakQueuedBytes).toBeLessThanOrEqual(maxQueuedBytes + 2 * maxRequestBytes + 2 * slab + 28);
      expect(disk.peakInFlight).toBeLessThanOrEqual(maxQueuedBytes / (64 * KiB) + 1);
    });

    it('bounds memory for reads whose replies the client does not read', async () => {
      const { port, disk, server } = await start({ maxQueuedBytes: 512 * KiB, maxRequestBytes: 256 * KiB, diskSize: 8 * MiB });
      const client = await connect(port);
      client.socket.pause();
      const batch: Buffer[] = [];
      for (let i = 0; i < 200; i++) batch.push(RawClient.request(P.CMD_READ, i, 0, 256 * KiB));
      client.write(Buffer.concat(batch)); // 50 MiB of reply data asked for
      await waitUntil(() => disk.completed > 0, 'the first read');
      // The server stops on its own: only what fits in the budget and the kernel socket buffers
      // was read from the backend (without the bound it would read all 200 meanwhile).
      expect(await quiesce(() => disk.completed)).toBeLessThanOrEqual(64);
      expect(server.stats.peakQueuedBytes).toBeLessThanOrEqual(512 * KiB + 2 * 256 * KiB + 64 * KiB);
      client.destroy();
    });

    it('DISC: answers the requests in flight, then closes', async () => {
      const { port, disk, server } = await start();
      const client = await connect(port);
      const release = disk.hold();
      client.send(P.CMD_WRITE, 1, 0, 5, 0, Buffer.from('first'));
      client.send(P.CMD_WRITE, 2, 8192, 6, P.CMD_FLAG_FUA, Buffer.from('second'));
      client.send(P.CMD_READ, 3, 4096, 4);
      client.send(P.CMD_FLUSH, 4, 0, 0);
      const closed = closedNow(client);
      client.disconnect();
      await waitUntil(() => disk.inFlight === 4, 'four requests in flight');
      await turns();
      expect(closed()).toBe(false);
      release();
      const handles = [];
      for (let i = 0; i < 4; i++) {
        const reply = await client.reply();
        expect(reply.error).toBe(0);
        handles.push(reply.handle.readUInt32BE(4));
      }
      expect(handles.sort()).toEqual([1, 2, 3, 4]);
      expect(await isClosed(client)).toBe(true);
      expect(disk.data.toString('latin1', 0, 5)).toBe('first');
      expect(disk.data.toString('latin1', 8192, 8198)).toBe('second');
      await waitUntil(() => server.connections === 0, 'the connection to go');
    });

    it('EOF without DISC: requests in flight still finish in the backend', async () => {
      const { port, disk, server } = await start();
      const client = await connect(port);
      const release = disk.hold();
      client.send(P.CMD_WRITE, 1, 0, 3, 0, Buffer.from('eof'));
      await waitUntil(() => disk.inFlight === 1, 'the write');
      client.socket.end();
      release();
      expect(await isClosed(client)).toBe(true);
      await waitUntil(() => server.connections === 0, 'the connection to go');
      expect(disk.data.toString('latin1', 0, 3)).toBe('eof');
    });

    it('EOF after a pipeline: every request already sent is still answered, then the connection closes', async () => {
      const { port, disk } = await start({ maxQueuedBytes: 64 * KiB });
      const client = await connect(port);
      const release = disk.hold();
      const batch: Buffer[] = [];
      for (let i = 0; i < 20; i++) {
        batch.push(RawClient.request(P.CMD_READ, i, i * 16 * KiB, 16 * KiB));
        client.expectRead(i, 16 * KiB);
      }
      client.write(Buffer.concat(batch));
      client.socket.end(); // half-close: no DISC
      // Only what fits the 64 KiB budget runs; the rest waits, parsed later.
      await waitUntil(() => disk.inFlight === 4, 'the budget to fill');
      release();
      const handles = new Set<number>();
      for (let i = 0; i < 20; i++) {
        const reply = await client.reply();
        expect(reply.error).toBe(0);
        expect(reply.data).toHaveLength(16 * KiB);
        handles.add(reply.handle.readUInt32BE(4));
      }
      expect(handles.size).toBe(20);
      expect(await isClosed(client)).toBe(true);
    });

    it('close({ drain: true }) answers in-flight requests, then ends connections and stops listening', async () => {
      const { port, disk, server } = await start();
      const a = await connect(port);
      const b = await connect(port);
      const handshaking = await rawConnect(port);
      const release = disk.hold();
      a.send(P.CMD_WRITE, 1, 0, 4, P.CMD_FLAG_FUA, Buffer.from('aaaa'));
      b.send(P.CMD_READ, 2, 0, 4);
      await waitUntil(() => disk.inFlight === 2, 'both requests');
      let closed = false;
      const closing = server.close({ drain: true }).then(() => (closed = true));
      expect(await isClosed(handshaking)).toBe(true); // nothing in flight there
      await turns();
      expect(closed).toBe(false);
      await expect(RawClient.connect(port)).rejects.toThrow(/ECONNREFUSED/);
      release();
      expect(await a.reply()).toMatchObject({ error: 0 });
      const read = await b.reply();
      expect(read.error).toBe(0);
      expect(read.data).toHaveLength(4);
      expect(await isClosed(a)).toBe(true);
      expect(await isClosed(b)).toBe(true);
      await closing;
      expect(server.connections).toBe(0);
      expect(disk.data.toString('latin1', 0, 4)).toBe('aaaa');
    });

    it('close({ drain: false }) drops connections at once but still waits for the backend', async () => {
      const { port, disk, server } = await start();
      const client = await connect(port);
      const release = disk.hold();
      client.send(P.CMD_WRITE, 1, 0, 4, 0, Buffer.from('dddd'));
      await waitUntil(() => disk.inFlight === 1, 'the write');
      let closed = false;
      const closing = server.close({ drain: false }).then(() => (closed = true));
      expect(await isClosed(client)).toBe(true);
      expect(client.buffered).toBe(0);
      expect(closed).toBe(false);
      release();
      await closing;
      expect(disk.inFlight).toBe(0);
    });

    it('serves several raw clients on different exports at once', async () => {
      const { port, disk, ro } = await start();
      const clientsNow = await Promise.all([connect(port), connect(port, 'ro'), connect(port), connect(port, 'ro')]);
      const results = await Promise.all(
        clientsNow.map(async (client, i) => {
          const replies = [];
          for (let k = 0; k < 10; k++) {
            if (i % 2 === 0) {
              const bytes = pattern(4096, i * 100 + k);
              replies.push(await client.request(P.CMD_WRITE, k, (i * 10 + k) * 4096, 4096, 0, bytes));
            } else {
              replies.push(await client.request(P.CMD_READ, k, k * 4096, 4096));
            }
          }
          return replies;
        }),
      );
      for (const [i, replies] of results.entries()) {
        for (const [k, reply] of replies.entries()) {
          expect(reply.error).toBe(0);
          if (i % 2 === 1) expect(reply.data!.equals(ro.data.subarray(k * 4096, (k + 1) * 4096))).toBe(true);
          else expect(disk.data.subarray((i * 10 + k) * 4096, (i * 10 + k + 1) * 4096).equals(pattern(4096, i * 100 + k))).toBe(true);
        }
      }
    });
  });

  describe('backends with readInto() and writev()', () => {
    it('reads into recycled buffers without mixing up replies, and writes from received pieces', async () => {
      const size = 8 * MiB;
      const contents = randomBytes(size);
      const { port, disk, server } = await start({ vectored: true, diskSize: size, maxQueuedBytes: 512 * KiB });
      disk.data.set(contents);
      const client = await connect(port);
      // 300 reads of distinct 48 KiB ranges in one burst: buffers are recycled many times over
      // while others are still in flight.
      const batch: Buffer[] = [];
      for (let i = 0; i < 300; i++) {
        batch.push(RawClient.request(P.CMD_READ, i, ((i * 37) % 160) * 48 * KiB, 48 * KiB));
        client.expectRead(i, 48 * KiB);
      }
      client.write(Buffer.concat(batch));
      for (let i = 0; i < 300; i++) {
        const reply = await client.reply();
        expect(reply.error).toBe(0);
        const k = reply.handle.readUInt32BE(4);
        const offset = ((k * 37) % 160) * 48 * KiB;
        expect(reply.data!.equals(contents.subarray(offset, offset + 48 * KiB))).toBe(true);
      }
      expect(server.stats.peakQueuedBytes).toBeLessThanOrEqual(512 * KiB + 2 * 48 * KiB + 64 * KiB);
      // Writes large enough to span socket chunks arrive as several pieces.
      const bytes = randomBytes(1 * MiB);
      expect((await client.request(P.CMD_WRITE, 1000, 3 * MiB, bytes.length, P.CMD_FLAG_FUA, bytes)).error).toBe(0);
      expect(disk.data.subarray(3 * MiB, 4 * MiB).equals(bytes)).toBe(true);
      expect(Math.max(...disk.writevPieces)).toBeGreaterThan(1);
      expect(disk.operations.at(-1)).toEqual({ op: 'write', offset: 3 * MiB, length: MiB, fua: true });
    });

    it('answers reads from backend views in one reply each, and releases every view once', async () => {
      const size = 4 * MiB;
      const contents = randomBytes(size);
      const { port, disk, server } = await start({ views: true, diskSize: size });
      disk.data.set(contents);
      const client = await connect(port);
      const batch: Buffer[] = [];
      for (let i = 0; i < 100; i++) {
        batch.push(RawClient.request(P.CMD_READ, i, i * 37 * KiB, 1 + i * 397));
        client.expectRead(i, 1 + i * 397);
      }
      client.write(Buffer.concat(batch));
      for (let i = 0; i < 100; i++) {
        const reply = await client.reply();
        const k = reply.handle.readUInt32BE(4);
        expect(reply.data!.equals(contents.subarray(k * 37 * KiB, k * 37 * KiB + 1 + k * 397))).toBe(true);
      }
      await waitUntil(() => disk.unreleasedViews === 0, 'every view released');
      expect(disk.releaseCalls).toBe(100);
      // Replies the client never reads: dropping the connection still releases them.
      client.socket.pause();
      for (let i = 0; i < 20; i++) client.send(P.CMD_READ, 200 + i, 0, 256 * KiB);
      await waitUntil(() => disk.completed >= 120, 'the reads to reach the backend');
      client.destroy();
      await waitUntil(() => server.connections === 0, 'the connection to close');
      await waitUntil(() => disk.unreleasedViews === 0, 'every view released after the drop');
      expect(disk.releaseCalls).toBe(120);
    });

    it('a reply the socket cannot send closes that connection only, and its views are still released', async () => {
      const { disk } = { disk: new MemoryExport(MiB, { views: true }) };
      let releases = 0;
      const broken = Object.assign(Object.create(disk) as MemoryExport, {
        name: 'broken',
        readViews: async (): Promise<{ views: Uint8Array[]; release(): void }> => ({
          views: [{ length: 4096 } as unknown as Uint8Array], // not bytes: socket.write throws
          release: () => void releases++,
        }),
      });
      const { port, server, errors } = await start({ exports: [disk, broken] });
      const bad = await connect(port, 'broken');
      const good = await connect(port);
      bad.send(P.CMD_READ, 1, 0, 4096);
      expect(await isClosed(bad)).toBe(true);
      expect(releases).toBe(1);
      expect(errors.some((e) => e.info.fatal && e.info.export === 'broken')).toBe(true);
      expect((await good.request(P.CMD_READ, 2, 0, 4096)).error).toBe(0);
      await server.close({ drain: true });
    });

    it('a failing readInto is an error reply, and the connection goes on', async () => {
      const { port, disk } = await start({ vectored: true });
      const client = await connect(port);
      disk.failWith = new NbdRequestError('EIO', 'bad sector');
      expect((await client.request(P.CMD_READ, 1, 0, 64 * KiB)).error).toBe(P.ERRNO.EIO);
      disk.failWith = undefined;
      disk.data.write('ok', 0);
      expect((await client.request(P.CMD_READ, 2, 0, 2)).data?.toString()).toBe('ok');
    });
  });

  describe('NbdServer setup', () => {
    it('listen on a port in use is a USAGE error naming the address', async () => {
      const blocker = createServer();
      await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
      const port = (blocker.address() as { port: number }).port;
      try {
        const server = new NbdServer({ exports: [new MemoryExport(4096)] });
        const error = await server.listen('127.0.0.1', port).catch((e: unknown) => e);
        expect(error).toBeInstanceOf(CdpError);
        expect((error as CdpError).code).toBe('USAGE');
        expect((error as CdpError).message).toBe(`listen address 127.0.0.1:${port} is in use: pick another --listen`);
        // Another address still works.
        expect((await server.listen('127.0.0.1', 0)).port).toBeGreaterThan(0);
        await expect(server.listen('127.0.0.1', 0)).rejects.toThrow(/already listening/);
        await server.close({ drain: false });
      } finally {
        await new Promise((resolve) => blocker.close(resolve));
      }
    });

    it('listen on port 0 returns the ephemeral port; connections counts open clients', async () => {
      const { port, server } = await start();
      expect(port).toBeGreaterThan(0);
      expect(server.connections).toBe(0);
      const a = await connect(port);
      await rawConnect(port);
      await waitUntil(() => server.connections === 2, 'two connections');
      a.disconnect();
      await waitUntil(() => server.connections === 1, 'one connection');
    });

    it('validates its options', () => {
      const disk = new MemoryExport(4096);
      expect(() => new NbdServer({ exports: [disk, new MemoryExport(4096)] })).toThrow(InvalidArgumentError);
      expect(() => new NbdServer({ exports: [disk], maxRequestBytes: 100 })).toThrow(/maxRequestBytes/);
      expect(() => new NbdServer({ exports: [disk], maxQueuedBytes: 0 })).toThrow(/maxQueuedBytes/);
    });
  });
});
