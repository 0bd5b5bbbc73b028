// serve: one point in time, read-only over NBD, straight from the repository, so a machine can
// boot or mount it before (or instead of) a full restore.
//
// PitExport is the NBD backend; every export name of one point in time shares one PitReader
// (serve/pit-reader.ts), which reads through an LRU cache of verified regions keyed by stored
// location (serve/region-cache.ts), plans ranged GETs and read-ahead for sequential reads
// (serve/read-ahead.ts), and fetches and verifies them on the one read path (RegionFetcher).
// Bytes that do not match their digest are never served: the read fails with EIO and a log
// line. Writes, trims and zeroing fail with EPERM. The NBD server gets a read as views
// (readViews: no copy; the buffers stay pinned until the reply is written) or copied into its
// own buffer (readInto).

import { CdpError } from '../errors.js';
import { NbdServer } from '../nbd/server.js';
import { NbdRequestError, type NbdExport, type ReadViews } from '../nbd/types.js';
import type { ObjectStore } from '../store/types.js';
import type { PointSelector } from './points.js';
import { loadPoint } from './restore.js';
import { type PitExportStats, PitReader, type PitReaderOptions } from './serve/pit-reader.js';

export { DEFAULT_CACHE_BYTES, DEFAULT_READ_AHEAD_BYTES, type PitExportStats } from './serve/pit-reader.js';

export interface PitExportOptions extends PitReaderOptions {
  store: ObjectStore;
  at: PointSelector;
  /** Take the newest point at or before `at` even if it is suspect or damaged (as restore). */
  allowSuspect?: boolean;
  /** Export name ('' is the default export). */
  name?: string;
  /** Cancels opening (choosing the point and loading its map). */
  signal?: AbortSignal;
  now?: number;
}

/** A point in time as a read-only NBD export. */
export class PitExport implements NbdExport {
  readonly readOnly = true;
  readonly name: string;
  readonly description: string;
  readonly size: number;
  /** The point in time served. */
  readonly seq: number;
  /** Its time, ISO 8601 UTC. */
  readonly time: string;
  readonly kind: string;
  /** Newer points at or before the request passed over because they are suspect or damaged. */
  readonly skipped: Array<{ seq: number; kinds: string[] }>;
  /** Marks on the served point itself (only with allowSuspect). */
  readonly untrusted: string[];

  private constructor(
    private readonly reader: PitReader,
    name: string,
    info: { time: string; kind: string; skipped: PitExport['skipped']; untrusted: string[] },
  ) {
    this.name = name;
    this.size = reader.geometry.volumeSize;
    this.seq = reader.seq;
    this.time = info.time;
    this.kind = info.kind;
    this.skipped = info.skipped;
    this.untrusted = info.untrusted;
    this.description = `cdp-s3 point in time ${this.seq} (${this.time}), read-only`;
  }

  static async open(options: PitExportOptions): Promise<PitExport> {
    const { repo, view, chosen } = await loadPoint(options);
    const info = {
      time: new Date(chosen.summary.end).toISOString(),
      kind: chosen.summary.kind,
      skipped: chosen.skipped,
      untrusted: chosen.untrusted,
    };
    return new PitExport(new PitReader(repo, view, chosen.seq, options), options.name ?? '', info);
  }

  /** The same point in time under another export name, sharing this one's cache and fetches. */
  withName(name: string): PitExport {
    return new PitExport(this.reader, name, this);
  }

  get stats(): Readonly<PitExportStats> {
    return this.reader.stats;
  }

  /** Whether any GET (for a read or ahead of reads) is still running; tests wait on it instead of sleeping. */
  get fetching(): boolean {
    return this.reader.fetching;
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = Buffer.allocUnsafe(length);
    await this.reader.readInto(offset, out);
    return out;
  }

  readInto(offset: number, target: Uint8Array): Promise<void> {
    return this.reader.readInto(offset, target);
  }

  readViews(offset: number, length: number): Promise<ReadViews> {
    return this.reader.readViews(offset, length);
  }

  write(_offset: number, _bytes: Uint8Array, _fua: boolean): Promise<void> {
    return Promise.reject(readOnly('write'));
  }

  flush(): Promise<void> {
    return Promise.resolve();
  }

  trim(_offset: number, _length: number, _fua: boolean): Promise<void> {
    return Promise.reject(readOnly('trim'));
  }

  writeZeroes(_offset: number, _length: number, _fua: boolean): Promise<void> {
    return Promise.reject(readOnly('write zeroes'));
  }

  /** Stops the fetches and the verifying threads (for every name of this point in time). */
  close(): Promise<void> {
    return this.reader.close();
  }
}

function readOnly(what: string): NbdRequestError {
  return new NbdRequestError('EPERM', `${what}: a point in time is served read-only`);
}

export function openPitExport(options: PitExportOptions): Promise<PitExport> {
  return PitExport.open(options);
}

export interface ServeOptions extends Omit<PitExportOptions, 'name' | 'signal'> {
  /** Where to listen; port 0 picks a free one. */
  listen: { host: string; port: number };
  /** Export names, all serving the same point in time. Default [''] (the default export). */
  names?: string[];
  /** Bytes of request data the server queues before it stops reading from a client. */
  maxQueuedBytes?: number;
  /** Cancels opening; once serving, aborting it stops the server (in-flight reads finish first). */
  signal?: AbortSignal;
}

export interface ServeHandle {
  host: string;
  port: number;
  seq: number;
  time: string;
  kind: string;
  names: string[];
  skipped: PitExport['skipped'];
  untrusted: string[];
  /** The backend of every name (for its stats). */
  pit: PitExport;
  /** Settles once the server is closed (by the signal or close()). */
  closed: Promise<void>;
  /** Stops accepting, answers the requests in flight, closes the connections and the export. */
  close(): Promise<void>;
}

/** Serves a point in time read-only over NBD until the signal aborts or close() is called. */
export async function serve(options: ServeOptions): Promise<ServeHandle> {
  const names = [...new Set(options.names ?? [''])];
  if (names.length === 0) throw new CdpError('INVALID_ARGUMENT', 'serve needs at least one export name');
  const pit = await PitExport.open({ ...options, name: names[0] });
  let server: NbdServer;
  let address: { host: string; port: number };
  try {
    server = new NbdServer({
      exports: names.map((name) => (name === pit.name ? pit : pit.withName(name))),
      ...(options.maxQueuedBytes === undefined ? {} : { maxQueuedBytes: options.maxQueuedBytes }),
      ...(options.log === undefined ? {} : { log: options.log }),
    });
    address = await server.listen(options.listen.host, options.listen.port);
  } catch (error) {
    await pit.close();
    throw error;
  }
  let closing: Promise<void> | undefined;
  let settle = (): void => {};
  const closed = new Promise<void>((resolve) => (settle = resolve));
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      options.signal?.removeEventListener('abort', onAbort);
      try {
        await server.close({ drain: true });
      } finally {
        await pit.close();
        settle();
      }
    })());
  const onAbort = (): void => void close().catch((error: unknown) => options.log?.(`serve: closing failed: ${(error as Error).message}`));
  if (options.signal?.aborted === true) onAbort();
  else options.signal?.addEventListener('abort', onAbort, { once: true });
  return {
    host: address.host,
    port: address.port,
    seq: pit.seq,
    time: pit.time,
    kind: pit.kind,
    names,
    skipped: pit.skipped,
    untrusted: pit.untrusted,
    pit,
    closed,
    close,
  };
}
