// What the NBD server serves: an export is a named block device with asynchronous operations.
// The server (server.ts) speaks the protocol; backends implement NbdExport: the protected
// primary (protect) and a read-only point in time from the repository (serve).

/** An error a backend raises to answer a request with a specific NBD error (default EIO). */
export class NbdRequestError extends Error {
  constructor(
    readonly errno: 'EPERM' | 'EIO' | 'ENOMEM' | 'EINVAL' | 'ENOSPC' | 'EOVERFLOW' | 'ENOTSUP' | 'ESHUTDOWN',
    message: string,
  ) {
    super(message);
  }
}

export interface NbdExport {
  /** Export name clients ask for ('' is the default export). */
  readonly name: string;
  readonly description?: string;
  /** Size in bytes. */
  readonly size: number;
  readonly readOnly: boolean;
  /** Bytes [offset, offset + length); the server has checked the range. */
  read(offset: number, length: number): Promise<Uint8Array>;
  /**
   * Optional, and used instead of read() when present: fills all of `target` with the bytes at
   * [offset, offset + target.length). The server owns `target` and reuses it once the reply is
   * sent, so the backend must not keep it after the promise settles. Saves an allocation per read.
   */
  readInto?(offset: number, target: Uint8Array): Promise<void>;
  /**
   * Optional, and preferred over readInto() and read() when present: the bytes at [offset,
   * offset + length) as views of the backend's own memory, in order, which the backend keeps
   * unchanged until the server calls release() (once, after the reply has been handed to the
   * kernel or dropped). Spares a copy per read for a backend that already holds the bytes.
   */
  readViews?(offset: number, length: number): Promise<ReadViews>;
  /** Durable before resolving when fua is set. */
  write(offset: number, bytes: Uint8Array, fua: boolean): Promise<void>;
  /**
   * Optional, and used instead of write() when present: the same write with the payload as the
   * pieces it arrived in (views of the received socket chunks, in order), which spares the server
   * a copy per request. Durable before resolving when fua is set.
   */
  writev?(offset: number, chunks: Uint8Array[], fua: boolean): Promise<void>;
  /** Everything acknowledged so far is durable. */
  flush(): Promise<void>;
  /** The range may read as anything afterwards (cdp-s3 backends make it zeros). */
  trim(offset: number, length: number, fua: boolean): Promise<void>;
  /** The range reads as zeros afterwards. */
  writeZeroes(offset: number, length: number, fua: boolean): Promise<void>;
}

/** What readViews() gives: the pieces of a read, and how to hand them back. */
export interface ReadViews {
  views: Uint8Array[];
  release(): void;
}
