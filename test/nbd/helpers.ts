// What the NBD tests share: a Buffer-backed export (optionally read-only, slow, or held at a gate),
// a raw protocol client that does the handshake itself and sends whatever bytes a test wants, and
// a runner for the Debian NBD clients.

import { execFile } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { ByteQueue } from '../../src/nbd/byte-queue.js';
import * as P from '../../src/nbd/protocol.js';
import { NbdRequestError, type NbdExport, type ReadViews } from '../../src/nbd/types.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

export interface MemoryExportOptions {
  name?: string;
  description?: string;
  readOnly?: boolean;
  /** Initial contents (copied); otherwise zeros of `size`. */
  contents?: Buffer;
  /** Also implement the optional readInto() and writev(), which the server then uses. */
  vectored?: boolean;
  /** Also implement readViews(): each read as three views (the middle one empty when possible). */
  views?: boolean;
}

export interface Operation {
  op: 'read' | 'write' | 'flush' | 'trim' | 'writeZeroes';
  offset?: number;
  length?: number;
  fua?: boolean;
}

/** A Buffer-backed export that records what it was asked to do. */
export class MemoryExport implements NbdExport {
  readonly name: string;
  readonly description: string | undefined;
  readonly readOnly: boolean;
  readonly data: Buffer;
  readonly operations: Operation[] = [];
  /** While set, every operation waits for it to resolve (tests hold requests in flight this way). */
  gate: Promise<void> | undefined;
  /** When set, the next operations fail with it. */
  failWith: Error | undefined;
  inFlight = 0;
  peakInFlight = 0;
  completed = 0;
  readInto?: (offset: number, target: Uint8Array) => Promise<void>;
  readViews?: (offset: number, length: number) => Promise<ReadViews>;
  /** readViews() results not yet released, and how often release() was called in all. */
  unreleasedViews = 0;
  releaseCalls = 0;
  writev?: (offset: number, chunks: Uint8Array[], fua: boolean) => Promise<void>;
  /** Pieces each writev() call got. */
  readonly writevPieces: number[] = [];

  constructor(size: number, options: MemoryExportOptions = {}) {
    this.name = options.name ?? '';
    this.description = options.description;
    this.readOnly = options.readOnly ?? false;
    this.data = options.contents === undefined ? Buffer.alloc(size) : Buffer.from(options.contents);
    if (options.views === true) {
      this.readViews = async (offset, length) => {
        await this.#enter({ op: 'read', offset, length });
        // A snapshot, so a write racing with the reply cannot change what was read.
        const copy = Buffer.from(this.data.subarray(offset, offset + length));
        const cut = Math.floor(length / 3);
        this.#leave();
        this.unreleasedViews++;
        let released = false;
        return {
          views: [copy.subarray(0, cut), copy.subarray(cut, cut), copy.subarray(cut)],
          release: () => {
            this.releaseCalls++;
            if (released) throw new Error('released twice');
            released = true;
            this.unreleasedViews--;
          },
        };
      };
    }
    if (options.vectored === true) {
      this.readInto = async (offset, target) => {
        await this.#enter({ op: 'read', offset, length: target.length });
        target.set(this.data.subarray(offset, offset + target.length));
        this.#leave();
      };
      this.writev = async (offset, chunks, fua) => {
        const length = chunks.reduce((n, c) => n + c.length, 0);
        if (this.readOnly) throw new NbdRequestError('EPERM', 'the server wrote to a read-only export');
        await this.#enter({ op: 'write', offset, length, fua });
        this.writevPieces.push(chunks.length);
        let at = offset;
        for (const c of chunks) {
          this.data.set(c, at);
          at += c.length;
        }
        this.#leave();
      };
    }
  }

  get size(): number {
    return this.data.length;
  }

  /** Holds every operation until the returned function is called. */
  hold(): () => void {
    let open!: () => void;
    this.gate = new Promise((resolve) => (open = resolve));
    return () => {
      this.gate = undefined;
      open();
    };
  }

  async #enter(operation: Operation): Promise<void> {
    this.operations.push(operation);
    this.inFlight += 1;
    this.peakInFlight = Math.max(this.peakInFlight, this.inFlight);
    try {
      if (this.gate !== undefined) await this.gate;
      if (this.failWith !== undefined) throw this.failWith;
    } catch (error) {
      this.inFlight -= 1;
      throw error;
    }
  }

  #leave(): void {
    this.inFlight -= 1;
    this.completed += 1;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    await this.#enter({ op: 'read', offset, length });
    this.#leave();
    return Buffer.from(this.data.subarray(offset, offset + length));
  }

  async write(offset: number, bytes: Uint8Array, fua: boolean): Promise<void> {
    if (this.readOnly) throw new NbdRequestError('EPERM', 'the server wrote to a read-only export');
    await this.#enter({ op: 'write', offset, length: bytes.length, fua });
    this.data.set(bytes, offset);
    this.#leave();
  }

  async flush(): Promise<void> {
    await this.#enter({ op: 'flush' });
    this.#leave();
  }

  async trim(offset: number, length: number, fua: boolean): Promise<void> {
    await this.#enter({ op: 'trim', offset, length, fua });
    this.data.fill(0, offset, offset + length);
    this.#leave();
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    await this.#enter({ op: 'writeZeroes', offset, length, fua });
    this.data.fill(0, offset, offset + length);
    this.#leave();
  }
}

// ---- Debian clients ----


export interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a client binary; never throws for a non-zero exit (the result carries the code). */
export function runTool(command: string, args: string[], timeoutMs = 60_000): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: timeoutMs, maxBuffer: 64 * MiB, encoding: 'utf8' }, (error, stdout, stderr) => {
      if (error !== null && typeof error.code !== 'number') {
        reject(new Error(`${command} ${args.join(' ')}: ${error.message}\n${stderr}`));
        return;
      }
      resolve({ code: error === null ? 0 : (error.code as number), stdout, stderr });
    });
  });
}

// ---- raw protocol client ----

export interface SimpleReply {
  error: number;
  handle: Buffer;
  data?: Buffer;
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

/** A client that speaks the protocol byte by byte, for what real clients never send. */
export class RawClient {
  readonly socket: Socket;
  readonly #input = new ByteQueue();
  #waiter: (() => void) | undefined;
  #ended = false;
  readonly closed: Promise<void>;
  /** Read length per outstanding READ handle (hex), so replies can be parsed out of order. */
  readonly #readLengths = new Map<string, number>();

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#input.push(chunk);
      this.#wake();
    });
    this.closed = new Promise((resolve) => {
      socket.on('close', () => {
        this.#ended = true;
        this.#wake();
        resolve();
      });
    });
    socket.on('error', () => {});
  }

  static connect(port: number, host = '127.0.0.1'): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ host, port, noDelay: true }, () => {
        socket.off('error', reject);
        resolve(new RawClient(socket));
      });
      socket.once('error', reject);
    });
  }

  /** Opens a connection and negotiates `name` with NBD_OPT_GO. */
  static async open(port: number, name = ''): Promise<{ client: RawClient; size: number; flags: number }> {
    const client = await RawClient.connect(port);
    await client.greet();
    const { size, flags } = await client.go(name);
    return { client, size, flags };
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.();
  }

  /** The next `n` bytes; rejects if the connection closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.#input.length < n) {
      if (this.#ended) throw new Error(`connection closed with ${this.#input.length} of ${n} bytes`);
      await new Promise<void>((resolve) => (this.#waiter = resolve));
    }
    return this.#input.take(n);
  }

  get buffered(): number {
    return this.#input.length;
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Reads the greeting and answers with `clientFlags`; returns the handshake flags. */
  async greet(clientFlags = P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES): Promise<number> {
    const greeting = await this.read(18);
    if (greeting.toString('latin1', 0, 16) !== 'NBDMAGICIHAVEOPT') throw new Error('bad greeting');
    const flags = Buffer.alloc(4);
    flags.writeUInt32BE(clientFlags, 0);
    this.write(flags);
    return greeting.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const header = Buffer.alloc(16);
    P.IHAVEOPT.copy(header, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([header, data]));
  }

  async readOptionReply(): Promise<OptionReply> {
    const header = await this.read(20);
    if (!header.subarray(0, 8).equals(P.OPTION_REPLY_MAGIC)) throw new Error('bad option reply magic');
    const length = header.readUInt32BE(16);
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data: await this.read(length) };
  }

  /** Sends NBD_OPT_INFO or NBD_OPT_GO and collects the replies up to the final one. */
  async info(option: number, name: string, requests: number[] = []): Promise<{ replies: OptionReply[]; final: OptionReply }> {
    const nameBytes = Buffer.from(name);
    const data = Buffer.alloc(4 + nameBytes.length + 2 + 2 * requests.length);
    data.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(data, 4);
    data.writeUInt16BE(requests.length, 4 + nameBytes.length);
    requests.forEach((r, i) => data.writeUInt16BE(r, 6 + nameBytes.length + 2 * i));
    this.sendOption(option, data);
    const replies: OptionReply[] = [];
    for (;;) {
      const reply = await this.readOptionReply();
      if (reply.type !== P.REP_INFO) return { replies, final: reply };
      replies.push(reply);
    }
  }

  async go(name: string): Promise<{ size: number; flags: number }> {
    const { replies, final } = await this.info(P.OPT_GO, name, [P.INFO_BLOCK_SIZE]);
    if (final.type !== P.REP_ACK) throw new Error(`NBD_OPT_GO failed with reply type 0x${final.type.toString(16)}: ${final.data.toString()}`);
    const exp = replies.find((r) => r.data.readUInt16BE(0) === P.INFO_EXPORT);
    if (exp === undefined) throw new Error('no NBD_INFO_EXPORT');
    return { size: Number(exp.data.readBigUInt64BE(2)), flags: exp.data.readUInt16BE(10) };
  }

  /** Encodes one request (with its payload for WRITE). */
  static request(command: number, handle: Buffer | number, offset: number, length: number, flags = 0, payload?: Buffer): Buffer {
    const header = Buffer.alloc(28);
    header.writeUInt32BE(P.REQUEST_MAGIC, 0);
    header.writeUInt16BE(flags, 4);
    header.writeUInt16BE(command, 6);
    handleBytes(handle).copy(header, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    return payload === undefined ? header : Buffer.concat([header, payload]);
  }

  /** Sends a request; for READ, remembers how much data its reply carries. */
  send(command: number, handle: Buffer | number, offset: number, length: number, flags = 0, payload?: Buffer): void {
    if (command === P.CMD_READ) this.expectRead(handle, length);
    this.write(RawClient.request(command, handle, offset, length, flags, payload));
  }

  /** Tells reply() that the READ with this handle (sent with write()) carries `length` bytes. */
  expectRead(handle: Buffer | number, length: number): void {
    this.#readLengths.set(handleBytes(handle).toString('hex'), length);
  }

  /** Reads one simple reply (with data if it answers a successful READ this client sent). */
  async reply(): Promise<SimpleReply> {
    const header = await this.read(16);
    const magic = header.readUInt32BE(0);
    if (magic !== P.SIMPLE_REPLY_MAGIC) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
    const error = header.readUInt32BE(4);
    const handle = Buffer.from(header.subarray(8, 16));
    const key = handle.toString('hex');
    const length = this.#readLengths.get(key);
    this.#readLengths.delete(key);
    if (error === 0 && length !== undefined && length > 0) return { error, handle, data: await this.read(length) };
    return { error, handle };
  }

  async request(command: number, handle: Buffer | number, offset: number, length: number, flags = 0, payload?: Buffer): Promise<SimpleReply> {
    this.send(command, handle, offset, length, flags, payload);
    return this.reply();
  }

  disconnect(): void {
    this.write(RawClient.request(P.CMD_DISC, 0, 0, 0));
  }

  destroy(): void {
    this.socket.destroy();
  }
}

export function handleBytes(handle: Buffer | number): Buffer {
  if (Buffer.isBuffer(handle)) return handle;
  const out = Buffer.alloc(8);
  out.writeBigUInt64BE(BigInt(handle), 0);
  return out;
}
