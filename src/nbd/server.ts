// The NBD server: speaks the fixed newstyle handshake and the transmission phase with simple
// replies over TCP, and hands every request to an NbdExport backend (types.ts).
//
// Per connection, the socket reads into recycled receive slabs (receive-slabs.ts: no allocation per
// read, up to a slab per read), and the bytes received sit in a ByteQueue and are parsed as whole
// messages. Requests run concurrently and are answered in whatever order the backend finishes
// them (the protocol allows it; clients match replies by their 8-byte handle). A reply's header and data are written
// together, in one corked writev. Backends that implement the optional readViews() answer with
// views of their own memory, released once the reply is written; those with readInto() read into
// recycled buffers (BufferPool), and writev() gets a write's payload as the socket chunks it
// arrived in, so the hot paths neither allocate nor copy per request.
//
// Memory per connection is bounded: a request is charged its payload (WRITE) or reply data (READ)
// from the moment it is parsed until its reply has been handed to the kernel. While the charges
// plus the unparsed bytes exceed maxQueuedBytes, no new request is started and the socket is
// paused (TCP then pushes back on the client); likewise while the client leaves more than
// maxQueuedBytes of replies unread. A message already being received is always received whole,
// so the bound is about maxQueuedBytes + 2 × maxRequestBytes plus two receive slabs (a read fills
// up to a slab; a small payload still pins its whole slab, so held slabs count when they are more).
//
// Requests the server refuses are answered without reaching the backend, and a refused WRITE's
// payload is skipped as it arrives (never buffered), so the connection stays usable: out of range
// (EINVAL; ENOSPC for WRITE and WRITE_ZEROES, as the protocol asks), larger than maxRequestBytes
// (EINVAL; TRIM and WRITE_ZEROES carry no payload and may cover the whole export), unknown
// command, unknown or un-negotiated flag (EINVAL), a write, trim or zero on a read-only export
// (EPERM). A message that cannot be parsed (bad magic, unknown client flags) closes that
// connection only. DISC, and a client half-closing, let the requests already received finish.

import { createServer, type Server, type Socket } from 'node:net';
import { InvalidArgumentError, UsageError } from '../errors.js';
import { BufferPool } from './buffer-pool.js';
import { ByteQueue } from './byte-queue.js';
import * as P from './protocol.js';
import { adoptSocket, readWithDataEvents, MIN_READ_BYTES, SLAB_BYTES, SlabPool, SlabReader, type ChunkOwner } from './receive-slabs.js';
import { NbdRequestError, type NbdExport } from './types.js';

const MiB = 1024 * 1024;
export const DEFAULT_MAX_QUEUED_BYTES = 64 * MiB;
export const DEFAULT_MAX_REQUEST_BYTES = 32 * MiB;
/** Preferred block size advertised in NBD_INFO_BLOCK_SIZE. */
export const PREFERRED_BLOCK_SIZE = 4096;
/** At most this many requests run at once on one connection (zero-length ones charge no bytes). */
const MAX_IN_FLIGHT = 256;
/** Option data larger than this is skipped and answered NBD_REP_ERR_TOO_BIG. */
const MAX_OPTION_BYTES = 64 * 1024;
/** Idle reply buffers kept for reuse, at most (and at most maxQueuedBytes). */
const MAX_POOLED_BYTES = 32 * MiB;
/** After a soft disconnect, how long the peer has to close its side before the socket is destroyed. */
const LINGER_MS = 2000;

export interface NbdServerOptions {
  /** The exports clients may choose; names must be distinct ('' is the default export). */
  exports: NbdExport[];
  /**
   * Per connection: request payload and reply data held in memory (plus unparsed input) above
   * which the server stops reading from that client until some requests finish. Default 64 MiB.
   */
  maxQueuedBytes?: number;
  /** Largest READ or WRITE accepted, advertised as the maximum block size. Default 32 MiB. */
  maxRequestBytes?: number;
  /**
   * Read each socket straight into recycled receive slabs (default true); false keeps Node's
   * 'data' events, a fresh buffer per read. See receive-slabs.ts.
   */
  readIntoSlabs?: boolean;
  /** One line per event: listening, connect, export chosen, refused or failed request, close. */
  log?: (line: string) => void;
  /**
   * Called for each error on a connection: protocol violations and socket errors (`fatal`: the
   * connection was closed) and backend failures (not fatal: the client got an NBD error reply).
   */
  onError?: (error: Error, info: NbdErrorInfo) => void;
}

export interface NbdErrorInfo {
  /** Connection number, from 1 in accept order. */
  connection: number;
  /** The client's address, `host:port`. */
  remote: string;
  /** The export the connection uses, once chosen. */
  export?: string;
  /** True when the connection was closed because of the error. */
  fatal: boolean;
}

/** A client broke the protocol (bad magic, unknown flags, unknown export with NBD_OPT_EXPORT_NAME). */
export class NbdProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NbdProtocolError';
  }
}

/** Counters for tests and diagnostics. */
export interface NbdServerStats {
  /** Connections accepted so far. */
  accepted: number;
  /** Highest queued bytes (charges plus unparsed input) any one connection has held. */
  peakQueuedBytes: number;
  /** Times a connection's socket was paused because its queued bytes were over maxQueuedBytes. */
  pauses: number;
  /** Requests answered (including error replies). */
  replies: number;
  /** Connections whose socket reads straight into receive slabs (the others use 'data' events). */
  readingIntoSlabs: number;
}

interface ServerContext {
  readonly exports: ReadonlyMap<string, NbdExport>;
  readonly exportList: readonly NbdExport[];
  readonly maxQueuedBytes: number;
  readonly maxRequestBytes: number;
  readonly stats: NbdServerStats;
  readonly pool: BufferPool;
  readonly slabs: SlabPool;
  /** Slabs of MIN_READ_BYTES for connections that are idle or trickling. */
  readonly smallSlabs: SlabPool;
  readonly readIntoSlabs: boolean;
  log(line: string): void;
  report(error: Error, info: NbdErrorInfo): void;
}

export class NbdServer {
  readonly #context: ServerContext;
  readonly #connections = new Set<Connection>();
  #server: Server | undefined;
  #listenCalled = false;
  #closing: Promise<void> | undefined;
  readonly stats: NbdServerStats = { accepted: 0, peakQueuedBytes: 0, pauses: 0, replies: 0, readingIntoSlabs: 0 };

  constructor(options: NbdServerOptions) {
    const maxQueuedBytes = options.maxQueuedBytes ?? DEFAULT_MAX_QUEUED_BYTES;
    const maxRequestBytes = options.maxRequestBytes ?? DEFAULT_MAX_REQUEST_BYTES;
    if (!Number.isSafeInteger(maxQueuedBytes) || maxQueuedBytes < 1) {
      throw new InvalidArgumentError(`maxQueuedBytes must be a positive integer, got ${maxQueuedBytes}`);
    }
    if (!Number.isSafeInteger(maxRequestBytes) || maxRequestBytes < PREFERRED_BLOCK_SIZE || maxRequestBytes > 0xffffffff) {
      throw new InvalidArgumentError(`maxRequestBytes must be an integer from ${PREFERRED_BLOCK_SIZE} to ${0xffffffff}, got ${maxRequestBytes}`);
    }
    const exports = new Map<string, NbdExport>();
    for (const e of options.exports) {
      if (exports.has(e.name)) throw new InvalidArgumentError(`two exports are named '${e.name}'`);
      if (Buffer.byteLength(e.name) > 4096) throw new InvalidArgumentError(`export name '${e.name.slice(0, 32)}…' is longer than 4096 bytes`);
      if (!Number.isSafeInteger(e.size) || e.size < 0) throw new InvalidArgumentError(`export '${e.name}' has an invalid size ${e.size}`);
      exports.set(e.name, e);
    }
    const log = options.log ?? (() => {});
    const onError = options.onError;
    this.#context = {
      exports,
      exportList: [...options.exports],
      maxQueuedBytes,
      maxRequestBytes,
      stats: this.stats,
      pool: new BufferPool(Math.min(maxQueuedBytes, MAX_POOLED_BYTES)),
      slabs: new SlabPool(Math.min(maxQueuedBytes, MAX_POOLED_BYTES), slabBytesFor(maxQueuedBytes)),
      smallSlabs: new SlabPool(Math.min(maxQueuedBytes, MAX_POOLED_BYTES) / 4, MIN_READ_BYTES),
      readIntoSlabs: options.readIntoSlabs ?? true,
      log,
      report: (error, info) => onError?.(error, info),
    };
  }

  /** Bytes of receive slabs held right now (by connections, unparsed input and requests). */
  get receiveSlabBytes(): number {
    return this.#context.slabs.bytesInUse + this.#context.smallSlabs.bytesInUse;
  }

  /** Open connections (handshaking or transmitting). */
  get connections(): number {
    return this.#connections.size;
  }

  /** Starts accepting connections; port 0 picks a free port. Resolves with the bound address. */
  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    if (this.#listenCalled) throw new InvalidArgumentError('the NBD server is already listening');
    this.#listenCalled = true;
    if (this.#closing !== undefined) throw new InvalidArgumentError('the NBD server is closed');
    // Paused on connect: each connection first moves its socket to reading into slabs.
    const server = createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (socket) => this.#accept(socket));
    const shown = `${host.includes(':') ? `[${host}]` : host}:${port}`;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port }, () => {
        server.off('error', reject);
        resolve();
      });
    }).catch((error: NodeJS.ErrnoException) => {
      this.#listenCalled = false; // the caller may try another address
      if (error.code === 'EADDRINUSE') throw new UsageError(`listen address ${shown} is in use: pick another --listen`, { cause: error });
      if (error.code === 'EACCES') {
        throw new UsageError(`listen address ${shown} is not permitted: pick a port above 1023 or another --listen`, { cause: error });
      }
      if (error.code === 'EADDRNOTAVAIL' || error.code === 'ENOTFOUND' || error.code === 'EAI_AGAIN') {
        throw new UsageError(`listen address ${shown} is not an address of this machine: pick another --listen`, { cause: error });
      }
      throw error;
    });
    server.on('error', (error) => this.#context.log(`nbd: server error: ${error.message}`));
    if (this.#closing !== undefined) {
      // close() ran while we were binding.
      server.close();
      throw new InvalidArgumentError('the NBD server was closed while it started listening');
    }
    this.#server = server;
    const address = server.address();
    if (address === null || typeof address === 'string') throw new Error('the NBD server has no TCP address');
    this.#context.log(`nbd: listening on ${address.family === 'IPv6' ? `[${address.address}]` : address.address}:${address.port}`);
    return { host: address.address, port: address.port };
  }

  /**
   * Stops accepting connections and ends the open ones. With `drain`, requests already handed to
   * the backend finish and are answered first, then each connection is ended (no new request is
   * started); without, connections are dropped at once. Either way it resolves only once every
   * backend call the server made has settled, so the caller may close the backends afterwards.
   */
  close(options: { drain: boolean }): Promise<void> {
    this.#closing ??= (async () => {
      const server = this.#server;
      const listening =
        server === undefined ? Promise.resolve() : new Promise<void>((resolve) => server.close(() => resolve()));
      for (const connection of this.#connections) connection.shutdown(options.drain);
      await Promise.all([...this.#connections].map((c) => c.done));
      await listening;
      this.#context.log('nbd: server closed');
    })();
    return this.#closing;
  }

  #accept(socket: Socket): void {
    if (this.#closing !== undefined) {
      socket.destroy();
      return;
    }
    this.stats.accepted += 1;
    const connection = new Connection(this.stats.accepted, socket, this.#context);
    this.#connections.add(connection);
    void connection.done.then(() => this.#connections.delete(connection));
  }
}

type Phase = 'client-flags' | 'option-header' | 'option-data' | 'request-header' | 'write-payload' | 'skip' | 'stopped';

interface Request {
  command: number;
  flags: number;
  handle: Buffer;
  offset: number;
  length: number;
}

/** One client: its handshake, then its requests. */
class Connection {
  readonly done: Promise<void>;
  readonly #id: number;
  readonly #socket: Socket;
  readonly #context: ServerContext;
  readonly #remote: string;
  readonly #input = new ByteQueue();
  readonly #reader: SlabReader;
  /** Slabs that in-flight requests hold payload views of, with how many holds each, and their bytes. */
  readonly #heldSlabs = new Map<ChunkOwner, number>();
  #heldSlabBytes = 0;
  #resolveDone!: () => void;

  #phase: Phase = 'client-flags';
  /** Bytes the current phase needs before it can parse its message. */
  #need = 4;
  #fixedNewstyle = false;
  #noZeroes = false;
  #option = { code: 0, length: 0 };
  #request: Request | undefined;
  #skip = { remaining: 0, then: (): void => {} };

  #export: NbdExport | undefined;
  #inFlight = 0;
  #inFlightBytes = 0;
  #paused = false;
  #pumping = false;
  /** Set once no more requests will be read; the socket ends when the last one is answered. */
  #stopping: 'disconnect' | 'eof' | 'drain' | 'abort' | undefined;
  #ending = false;
  #closed = false;
  #peerEof = false;

  constructor(id: number, accepted: Socket, context: ServerContext) {
    this.#id = id;
    this.#context = context;
    this.#reader = new SlabReader(context.slabs, context.smallSlabs);
    const onChunk = (chunk: Buffer, owner?: ChunkOwner): void => {
      this.#input.push(chunk, owner);
      this.#pump();
    };
    const { socket, intoSlabs } = context.readIntoSlabs ? adoptSocket(accepted, this.#reader, onChunk) : readWithDataEvents(accepted, onChunk);
    if (intoSlabs) context.stats.readingIntoSlabs += 1;
    this.#socket = socket;
    this.#remote = `${socket.remoteAddress?.includes(':') === true ? `[${socket.remoteAddress}]` : socket.remoteAddress}:${socket.remotePort}`;
    this.done = new Promise((resolve) => (this.#resolveDone = resolve));
    socket.setNoDelay(true);
    socket.on('drain', () => this.#pump());
    socket.on('end', () => this.#peerEnded());
    socket.on('error', (error) => {
      if (!this.#closed) this.#context.log(`nbd: connection ${this.#id}: ${error.message}`);
      this.#report(error, true);
    });
    socket.on('close', () => {
      this.#closed = true;
      this.#input.clear();
      this.#reader.close();
      this.#context.log(`nbd: connection ${this.#id} closed`);
      this.#checkDone();
    });
    this.#context.log(`nbd: connection ${id} from ${this.#remote}`);
    const greeting = Buffer.alloc(18);
    P.NBDMAGIC.copy(greeting, 0);
    P.IHAVEOPT.copy(greeting, 8);
    greeting.writeUInt16BE(P.FLAG_FIXED_NEWSTYLE | P.FLAG_NO_ZEROES, 16);
    socket.write(greeting);
  }

  /** Server shutdown: with drain, answer what is in flight and end; without, drop the connection. */
  shutdown(drain: boolean): void {
    if (this.#closed) return;
    const transmitting = this.#export !== undefined;
    if (!drain || !transmitting) {
      this.#socket.destroy();
      return;
    }
    this.#stop('drain');
  }

  // ---- input ----

  #pump(): void {
    if (this.#pumping || this.#closed) return;
    this.#pumping = true;
    try {
      while (!this.#closed) {
        if (this.#phase === 'stopped') {
          this.#input.clear();
          break;
        }
        if (this.#phase === 'skip') {
          this.#skip.remaining -= this.#input.skip(this.#skip.remaining);
          if (this.#skip.remaining > 0) {
            if (this.#peerEof) this.#stop('eof');
            break;
          }
          this.#setPhase('request-header', P.REQUEST_HEADER_BYTES);
          this.#skip.then();
          continue;
        }
        if (this.#phase === 'request-header' && this.#busy()) break;
        if (this.#input.length < this.#need) {
          // The client half-closed: once every whole request it sent has been taken, stop.
          if (this.#peerEof) this.#stop('eof');
          break;
        }
        this.#step();
      }
    } finally {
      this.#pumping = false;
    }
    this.#updateFlow();
  }

  /** True while no new request may start: too much in flight, or replies the client has not read. */
  #busy(): boolean {
    const max = this.#context.maxQueuedBytes;
    return this.#heldBytes() >= max || this.#inFlight >= MAX_IN_FLIGHT || this.#socket.writableLength > max;
  }

  /**
   * Memory in-flight requests hold: their charges, or the receive slabs their payloads keep alive
   * when that is more (a small write can pin a whole slab).
   */
  #heldBytes(): number {
    return Math.max(this.#inFlightBytes, this.#heldSlabBytes);
  }

  /** Pauses the socket while over budget with a whole message already here; resumes otherwise. */
  #updateFlow(): void {
    if (this.#closed) return;
    const queued = this.#heldBytes() + this.#input.length;
    const stats = this.#context.stats;
    if (queued > stats.peakQueuedBytes) stats.peakQueuedBytes = queued;
    const pause = this.#phase !== 'stopped' && queued > this.#context.maxQueuedBytes && this.#input.length >= this.#need;
    if (pause && !this.#paused) {
      this.#paused = true;
      stats.pauses += 1;
      this.#socket.pause();
    } else if (!pause && this.#paused) {
      this.#paused = false;
      this.#socket.resume();
    }
  }

  #setPhase(phase: Phase, need: number): void {
    this.#phase = phase;
    this.#need = need;
  }

  #step(): void {
    switch (this.#phase) {
      case 'client-flags':
        return this.#clientFlags(this.#input.take(4));
      case 'option-header':
        return this.#optionHeader(this.#input.take(P.OPTION_HEADER_BYTES));
      case 'option-data':
        this.#setPhase('option-header', P.OPTION_HEADER_BYTES);
        return this.#handleOption(this.#option.code, this.#input.take(this.#option.length));
      case 'request-header':
        return this.#requestHeader(this.#input.take(P.REQUEST_HEADER_BYTES));
      case 'write-payload': {
        const request = this.#request!;
        this.#request = undefined;
        this.#setPhase('request-header', P.REQUEST_HEADER_BYTES);
        // A backend with writev() gets the payload as views of the received chunks (no copy);
        // write() gets it whole (a view of one chunk, or one copy when it spans several). Views
        // keep their slabs held until the backend is done with them.
        const holds: ChunkOwner[] = [];
        const views = this.#input.takeViews(request.length, holds);
        if (this.#export!.writev !== undefined || views.length === 1) {
          this.#hold(holds);
          return this.#dispatch(request, this.#export!.writev !== undefined ? views : views[0], holds);
        }
        const whole = Buffer.concat(views, request.length);
        for (const owner of holds) owner.unref();
        return this.#dispatch(request, whole);
      }
      default:
        return;
    }
  }

  // ---- handshake ----

  #clientFlags(bytes: Buffer): void {
    const flags = bytes.readUInt32BE(0);
    if ((flags & ~(P.FLAG_C_FIXED_NEWSTYLE | P.FLAG_C_NO_ZEROES)) !== 0) {
      return this.#violation(`unknown client flags 0x${flags.toString(16)}`);
    }
    this.#fixedNewstyle = (flags & P.FLAG_C_FIXED_NEWSTYLE) !== 0;
    this.#noZeroes = (flags & P.FLAG_C_NO_ZEROES) !== 0;
    this.#setPhase('option-header', P.OPTION_HEADER_BYTES);
  }

  #optionHeader(header: Buffer): void {
    if (!header.subarray(0, 8).equals(P.IHAVEOPT)) return this.#violation('bad option magic');
    const code = header.readUInt32BE(8);
    const length = header.readUInt32BE(12);
    if (length > MAX_OPTION_BYTES) {
      if (code === P.OPT_EXPORT_NAME) return this.#violation(`export name of ${length} bytes`);
      this.#phase = 'skip';
      this.#need = 1;
      this.#skip = {
        remaining: length,
        then: () => {
          this.#setPhase('option-header', P.OPTION_HEADER_BYTES);
          this.#optionReply(code, P.REP_ERR_TOO_BIG, Buffer.from(`option data of ${length} bytes is too large`));
        },
      };
      return;
    }
    this.#option = { code, length };
    this.#setPhase('option-data', length);
  }

  #handleOption(code: number, data: Buffer): void {
    if (!this.#fixedNewstyle && code !== P.OPT_EXPORT_NAME) {
      return this.#violation(`option ${code} from a client without fixed newstyle`);
    }
    switch (code) {
      case P.OPT_EXPORT_NAME: {
        const name = data.toString('utf8');
        const exp = this.#context.exports.get(name);
        if (exp === undefined) return this.#violation(`unknown export '${name}'`);
        const reply = Buffer.alloc(this.#noZeroes ? 10 : 134);
        writeUInt64(reply, exp.size, 0);
        reply.writeUInt16BE(transmissionFlags(exp), 8);
        this.#socket.write(reply);
        return this.#enterTransmission(exp);
      }
      case P.OPT_ABORT:
        this.#optionReply(code, P.REP_ACK);
        return this.#stop('abort');
      case P.OPT_LIST: {
        if (data.length !== 0) return this.#optionReply(code, P.REP_ERR_INVALID, Buffer.from('NBD_OPT_LIST takes no data'));
        for (const exp of this.#context.exportList) {
          const name = Buffer.from(exp.name);
          const description = Buffer.from(exp.description ?? '');
          const body = Buffer.alloc(4 + name.length + description.length);
          body.writeUInt32BE(name.length, 0);
          name.copy(body, 4);
          description.copy(body, 4 + name.length);
          this.#optionReply(code, P.REP_SERVER, body);
        }
        return this.#optionReply(code, P.REP_ACK);
      }
      case P.OPT_INFO:
      case P.OPT_GO:
        return this.#infoOrGo(code, data);
      default:
        // STARTTLS, STRUCTURED_REPLY, meta contexts, extended headers and anything newer.
        return this.#optionReply(code, P.REP_ERR_UNSUP, Buffer.from(`option ${code} is not supported`));
    }
  }

  #infoOrGo(code: number, data: Buffer): void {
    const invalid = (why: string): void => this.#optionReply(code, P.REP_ERR_INVALID, Buffer.from(why));
    if (data.length < 6) return invalid('option data too short');
    const nameLength = data.readUInt32BE(0);
    if (nameLength > data.length - 6) return invalid('export name length exceeds the option data');
    const name = data.toString('utf8', 4, 4 + nameLength);
    const count = data.readUInt16BE(4 + nameLength);
    if (data.length !== 6 + nameLength + 2 * count) return invalid('information request count does not match the option length');
    const requested = new Set<number>();
    for (let i = 0; i < count; i++) requested.add(data.readUInt16BE(6 + nameLength + 2 * i));
    const exp = this.#context.exports.get(name);
    if (exp === undefined) {
      this.#context.log(`nbd: connection ${this.#id}: unknown export '${name}'`);
      return this.#optionReply(code, P.REP_ERR_UNKNOWN, Buffer.from(`unknown export '${name}'`));
    }
    const info = Buffer.alloc(12);
    info.writeUInt16BE(P.INFO_EXPORT, 0);
    writeUInt64(info, exp.size, 2);
    info.writeUInt16BE(transmissionFlags(exp), 10);
    this.#optionReply(code, P.REP_INFO, info);
    if (requested.has(P.INFO_NAME)) this.#optionReply(code, P.REP_INFO, infoString(P.INFO_NAME, exp.name));
    if (requested.has(P.INFO_DESCRIPTION) && exp.description !== undefined) {
      this.#optionReply(code, P.REP_INFO, infoString(P.INFO_DESCRIPTION, exp.description));
    }
    const sizes = Buffer.alloc(14);
    sizes.writeUInt16BE(P.INFO_BLOCK_SIZE, 0);
    sizes.writeUInt32BE(1, 2);
    sizes.writeUInt32BE(PREFERRED_BLOCK_SIZE, 6);
    sizes.writeUInt32BE(this.#context.maxRequestBytes, 10);
    this.#optionReply(code, P.REP_INFO, sizes);
    this.#optionReply(code, P.REP_ACK);
    if (code === P.OPT_GO) this.#enterTransmission(exp);
  }

  #optionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): void {
    const header = Buffer.allocUnsafe(P.OPTION_REPLY_HEADER_BYTES);
    P.OPTION_REPLY_MAGIC.copy(header, 0);
    header.writeUInt32BE(option, 8);
    header.writeUInt32BE(type, 12);
    header.writeUInt32BE(data.length, 16);
    this.#write(header, data);
  }

  #enterTransmission(exp: NbdExport): void {
    this.#export = exp;
    this.#setPhase('request-header', P.REQUEST_HEADER_BYTES);
    this.#context.log(`nbd: connection ${this.#id}: export '${exp.name}' (${exp.size} bytes${exp.readOnly ? ', read-only' : ''})`);
  }

  // ---- transmission ----

  #requestHeader(header: Buffer): void {
    const magic = header.readUInt32BE(0);
    if (magic !== P.REQUEST_MAGIC) return this.#violation(`bad request magic 0x${magic.toString(16).padStart(8, '0')}`);
    const request: Request = {
      flags: header.readUInt16BE(4),
      command: header.readUInt16BE(6),
      handle: Buffer.from(header.subarray(8, 16)),
      // Above 2^53 the sum loses precision but stays above any export size, so checks still hold.
      offset: header.readUInt32BE(16) * 2 ** 32 + header.readUInt32BE(20),
      length: header.readUInt32BE(24),
    };
    if (request.command === P.CMD_DISC) return this.#stop('disconnect');
    const error = this.#check(request);
    if (request.command === P.CMD_WRITE && request.length > 0) {
      if (error === undefined) {
        this.#request = request;
        this.#setPhase('write-payload', request.length);
        return;
      }
      // Refused: skip the payload as it arrives, then answer.
      this.#phase = 'skip';
      this.#need = 1;
      this.#skip = { remaining: request.length, then: () => this.#refuse(request, error) };
      return;
    }
    if (error !== undefined) return this.#refuse(request, error);
    if (request.length === 0 && request.command !== P.CMD_FLUSH) return this.#reply(request.handle, 0);
    this.#dispatch(request);
  }

  /** Why the server refuses a request without asking the backend, or undefined. */
  #check(request: Request): { errno: P.NbdErrno; why: string } | undefined {
    const exp = this.#export!;
    const { command, flags, offset, length } = request;
    let allowed: number;
    switch (command) {
      case P.CMD_READ:
      case P.CMD_WRITE:
      case P.CMD_FLUSH:
      case P.CMD_TRIM:
        allowed = P.CMD_FLAG_FUA;
        break;
      case P.CMD_WRITE_ZEROES:
        allowed = P.CMD_FLAG_FUA | P.CMD_FLAG_NO_HOLE;
        break;
      default:
        return { errno: 'EINVAL', why: `unknown command ${command}` };
    }
    if ((flags & ~allowed) !== 0) return { errno: 'EINVAL', why: `flags 0x${flags.toString(16)} not valid for this command` };
    const writes = command === P.CMD_WRITE || command === P.CMD_TRIM || command === P.CMD_WRITE_ZEROES;
    if (writes && exp.readOnly) return { errno: 'EPERM', why: 'the export is read-only' };
    if ((command === P.CMD_READ || command === P.CMD_WRITE) && length > this.#context.maxRequestBytes) {
      return { errno: 'EINVAL', why: `length ${length} exceeds the maximum block size ${this.#context.maxRequestBytes}` };
    }
    if (command !== P.CMD_FLUSH && (offset > exp.size || length > exp.size - offset)) {
      const errno = command === P.CMD_WRITE || command === P.CMD_WRITE_ZEROES ? 'ENOSPC' : 'EINVAL';
      return { errno, why: `range ${offset}+${length} is beyond the export size ${exp.size}` };
    }
    return undefined;
  }

  #refuse(request: Request, error: { errno: P.NbdErrno; why: string }): void {
    this.#context.log(`nbd: connection ${this.#id}: ${commandName(request.command)} refused (${error.errno}): ${error.why}`);
    this.#reply(request.handle, P.ERRNO[error.errno]);
  }

  /** Runs a request on the backend and answers it. */
  #dispatch(request: Request, payload?: Buffer | Buffer[], holds?: ChunkOwner[]): void {
    const charge = request.command === P.CMD_READ || request.command === P.CMD_WRITE ? request.length : 0;
    this.#inFlight += 1;
    this.#inFlightBytes += charge;
    // What the reply's data must give back once it is written (a pooled buffer, backend views).
    let giveBack: (() => void) | undefined;
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      giveBack?.();
      if (holds !== undefined) this.#release(holds);
      this.#inFlight -= 1;
      this.#inFlightBytes -= charge;
      if (this.#stopping !== undefined) this.#maybeEnd();
      else this.#pump();
      this.#checkDone();
    };
    this.#perform(request, payload).then(
      (result) => {
        giveBack = result?.release;
        if (this.#closed) return release();
        try {
          this.#reply(request.handle, 0, result?.data, release);
        } catch (error) {
          // The backend handed back something the socket cannot send: this connection is done.
          this.#context.log(`nbd: connection ${this.#id}: ${commandName(request.command)} reply failed: ${(error as Error).message}; closing the connection`);
          this.#report(error instanceof Error ? error : new Error(String(error)), true);
          release();
          this.#socket.destroy();
        }
      },
      (error: unknown) => {
        const err = error instanceof Error ? error : new Error(String(error));
        const errno = error instanceof NbdRequestError ? error.errno : 'EIO';
        this.#context.log(`nbd: connection ${this.#id}: ${commandName(request.command)} ${request.offset}+${request.length} failed (${errno}): ${err.message}`);
        this.#report(err, false);
        if (this.#closed) return release();
        this.#reply(request.handle, P.ERRNO[errno] ?? P.ERRNO.EIO, undefined, release);
      },
    );
  }

  /** Counts the slabs a request's payload views keep alive (against the memory bound). */
  #hold(holds: ChunkOwner[]): void {
    for (const owner of holds) {
      const n = this.#heldSlabs.get(owner) ?? 0;
      if (n === 0) this.#heldSlabBytes += owner.byteLength;
      this.#heldSlabs.set(owner, n + 1);
    }
  }

  /** Lets go of the slabs a finished request held. */
  #release(holds: ChunkOwner[]): void {
    for (const owner of holds) {
      const n = this.#heldSlabs.get(owner)! - 1;
      if (n === 0) {
        this.#heldSlabs.delete(owner);
        this.#heldSlabBytes -= owner.byteLength;
      } else this.#heldSlabs.set(owner, n);
      owner.unref();
    }
  }

  async #perform(
    request: Request,
    payload: Buffer | Buffer[] | undefined,
  ): Promise<{ data: Uint8Array | Uint8Array[]; release?: () => void } | undefined> {
    const exp = this.#export!;
    const fua = (request.flags & P.CMD_FLAG_FUA) !== 0;
    switch (request.command) {
      case P.CMD_READ: {
        if (exp.readViews !== undefined) {
          const { views, release } = await exp.readViews(request.offset, request.length);
          let total = 0;
          for (const view of views) total += view.length;
          if (total !== request.length) {
            release();
            throw new NbdRequestError('EIO', `the backend returned ${total} bytes for a ${request.length}-byte read`);
          }
          return { data: views, release };
        }
        if (exp.readInto !== undefined) {
          const pool = this.#context.pool;
          const target = pool.acquire(request.length);
          try {
            await exp.readInto(request.offset, target);
          } catch (error) {
            pool.release(target);
            throw error;
          }
          return { data: target, release: () => pool.release(target) };
        }
        const data = await exp.read(request.offset, request.length);
        if (data.length !== request.length) {
          throw new NbdRequestError('EIO', `the backend returned ${data.length} bytes for a ${request.length}-byte read`);
        }
        return { data };
      }
      case P.CMD_WRITE:
        if (Array.isArray(payload)) await exp.writev!(request.offset, payload, fua);
        else await exp.write(request.offset, payload!, fua);
        return undefined;
      case P.CMD_FLUSH:
        await exp.flush();
        return undefined;
      case P.CMD_TRIM:
        await exp.trim(request.offset, request.length, fua);
        return undefined;
      case P.CMD_WRITE_ZEROES:
        await exp.writeZeroes(request.offset, request.length, fua);
        return undefined;
      default:
        throw new NbdRequestError('EINVAL', `unknown command ${request.command}`);
    }
  }

  /** Sends a simple reply: the header and (for a successful READ) its data in one write. */
  #reply(handle: Buffer, errno: number, data?: Uint8Array | Uint8Array[], written?: () => void): void {
    this.#context.stats.replies += 1;
    const header = Buffer.allocUnsafe(P.SIMPLE_REPLY_HEADER_BYTES);
    header.writeUInt32BE(P.SIMPLE_REPLY_MAGIC, 0);
    header.writeUInt32BE(errno, 4);
    handle.copy(header, 8);
    this.#write(header, errno === 0 ? data : undefined, written);
  }

  #write(header: Buffer, data: Uint8Array | Uint8Array[] | undefined, written?: () => void): void {
    const socket = this.#socket;
    if (this.#closed || socket.destroyed || socket.writableEnded) {
      written?.();
      return;
    }
    const callback = written === undefined ? undefined : () => written();
    const pieces = data === undefined ? [] : Array.isArray(data) ? data.filter((piece) => piece.length > 0) : data.length > 0 ? [data] : [];
    if (pieces.length === 0) {
      socket.write(header, callback);
      return;
    }
    // One writev for all: the header never goes out without its data. The callback of the last
    // write runs once everything before it has been written too.
    socket.cork();
    socket.write(header);
    for (let i = 0; i < pieces.length; i++) socket.write(pieces[i]!, i === pieces.length - 1 ? callback : undefined);
    socket.uncork();
  }

  // ---- ending ----

  /** No more requests are read; once the in-flight ones are answered, the socket ends. */
  #stop(reason: 'disconnect' | 'eof' | 'drain' | 'abort'): void {
    this.#stopping ??= reason;
    this.#setPhase('stopped', 0);
    this.#input.clear();
    // Keep reading (and discarding) so the socket closes with FIN, not RST.
    if (this.#paused) {
      this.#paused = false;
      this.#socket.resume();
    }
    this.#maybeEnd();
  }

  #maybeEnd(): void {
    if (this.#ending || this.#inFlight > 0 || this.#closed) return;
    this.#ending = true;
    const socket = this.#socket;
    socket.end(() => {
      // Our side is flushed; give the peer a moment to close its own, then drop it.
      const timer = setTimeout(() => socket.destroy(), LINGER_MS);
      timer.unref();
      socket.once('close', () => clearTimeout(timer));
    });
  }

  #peerEnded(): void {
    if (this.#export === undefined) {
      // During the handshake (e.g. after NBD_OPT_ABORT, or a client that only listed exports).
      this.#stopping ??= 'eof';
      this.#socket.end();
      return;
    }
    // Requests already received are still answered (a client may pipeline, then half-close).
    this.#peerEof = true;
    this.#pump();
  }

  #violation(message: string): void {
    this.#context.log(`nbd: connection ${this.#id}: protocol error: ${message}; closing the connection`);
    this.#report(new NbdProtocolError(message), true);
    this.#setPhase('stopped', 0);
    this.#input.clear();
    this.#socket.destroy();
  }

  #report(error: Error, fatal: boolean): void {
    const info: NbdErrorInfo = { connection: this.#id, remote: this.#remote, fatal };
    if (this.#export !== undefined) info.export = this.#export.name;
    try {
      this.#context.report(error, info);
    } catch {
      // A throwing callback must not take the connection down with it.
    }
  }

  #checkDone(): void {
    if (this.#closed && this.#inFlight === 0) this.#resolveDone();
  }
}

/** Receive slabs a sixteenth of the per-connection budget, from 64 KiB to 1 MiB (a power of two). */
export function slabBytesFor(maxQueuedBytes: number): number {
  let size = MIN_READ_BYTES;
  while (size * 2 <= Math.min(SLAB_BYTES, maxQueuedBytes / 16)) size *= 2;
  return size;
}

function transmissionFlags(exp: NbdExport): number {
  // Backends share one state per export and flush is global, so FLUSH and FUA on one connection
  // cover writes answered on every other: clients may spread their requests over connections.
  const flags = P.TFLAG_HAS_FLAGS | P.TFLAG_SEND_FLUSH | P.TFLAG_SEND_FUA | P.TFLAG_CAN_MULTI_CONN;
  // A read-only export offers no way to write (writes, trims and zeroes sent anyway get EPERM).
  return exp.readOnly ? flags | P.TFLAG_READ_ONLY : flags | P.TFLAG_SEND_TRIM | P.TFLAG_SEND_WRITE_ZEROES;
}

function infoString(type: number, text: string): Buffer {
  const bytes = Buffer.from(text);
  const out = Buffer.alloc(2 + bytes.length);
  out.writeUInt16BE(type, 0);
  bytes.copy(out, 2);
  return out;
}

function writeUInt64(buffer: Buffer, value: number, offset: number): void {
  buffer.writeUInt32BE(Math.floor(value / 2 ** 32), offset);
  buffer.writeUInt32BE(value >>> 0, offset + 4);
}

function commandName(command: number): string {
  return P.COMMAND_NAMES[command] ?? `command ${command}`;
}
