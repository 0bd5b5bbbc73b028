// An NbdExport over a regular file with positional I/O: the simplest real backend, used by the NBD
// benchmark as the like-for-like peer of nbdkit's file plugin. FLUSH and FUA are fdatasync. TRIM
// and WRITE_ZEROES write zeros (cdp-s3 backends read trimmed ranges as zeros), in bounded chunks
// so a whole-disk request does not allocate the whole disk. Positional I/O on the raw descriptor
// (util/positional-io.ts).

import { close, fdatasync, fstat, open } from 'node:fs';
import { promisify } from 'node:util';
import { InvalidArgumentError } from '../errors.js';
import { preadFully, pwriteFully, pwritevFully } from '../util/positional-io.js';
import type { NbdExport } from './types.js';

const ZERO_CHUNK = Buffer.alloc(1024 * 1024);
const openAsync = promisify(open);
const fstatAsync = promisify(fstat);
const closeAsync = promisify(close);
const fdatasyncAsync = promisify(fdatasync);

export interface FileExportOptions {
  /** Export name; default '' (the default export). */
  name?: string;
  description?: string;
  readOnly?: boolean;
}

export class FileExport implements NbdExport {
  readonly name: string;
  readonly description: string | undefined;
  readonly size: number;
  readonly readOnly: boolean;
  #fd: number;

  private constructor(fd: number, size: number, options: FileExportOptions) {
    this.#fd = fd;
    this.size = size;
    this.name = options.name ?? '';
    this.description = options.description;
    this.readOnly = options.readOnly ?? false;
  }

  /** Opens `path` (a regular file that must exist); its current size is the export's size. */
  static async open(path: string, options: FileExportOptions = {}): Promise<FileExport> {
    const fd = await openAsync(path, options.readOnly === true ? 'r' : 'r+');
    try {
      const stat = await fstatAsync(fd);
      if (!stat.isFile()) throw new InvalidArgumentError(`${path}: not a regular file`);
      return new FileExport(fd, stat.size, options);
    } catch (error) {
      await closeAsync(fd);
      throw error;
    }
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    const out = Buffer.allocUnsafeSlow(length);
    await this.readInto(offset, out);
    return out;
  }

  async readInto(offset: number, target: Uint8Array): Promise<void> {
    const n = await preadFully(this.#fd, target, offset);
    // The file shrank under us: what is past its end reads as zeros.
    if (n < target.length) target.fill(0, n);
  }

  async write(offset: number, bytes: Uint8Array, fua: boolean): Promise<void> {
    await pwriteFully(this.#fd, bytes, offset);
    if (fua) await fdatasyncAsync(this.#fd);
  }

  async writev(offset: number, chunks: Uint8Array[], fua: boolean): Promise<void> {
    await pwritevFully(this.#fd, chunks, offset);
    if (fua) await fdatasyncAsync(this.#fd);
  }

  async flush(): Promise<void> {
    await fdatasyncAsync(this.#fd);
  }

  trim(offset: number, length: number, fua: boolean): Promise<void> {
    return this.writeZeroes(offset, length, fua);
  }

  async writeZeroes(offset: number, length: number, fua: boolean): Promise<void> {
    for (let at = offset; at < offset + length; at += ZERO_CHUNK.length) {
      await this.write(at, ZERO_CHUNK.subarray(0, Math.min(ZERO_CHUNK.length, offset + length - at)), false);
    }
    if (fua) await fdatasyncAsync(this.#fd);
  }

  /** Closes the file; the export must no longer be served. */
  async close(): Promise<void> {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    await closeAsync(fd);
  }
}
