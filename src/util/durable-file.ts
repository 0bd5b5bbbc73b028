// Local files that must survive a crash: syncing files and directory entries, and writing a file
// whole under its name (temporary name, sync, rename, directory sync), so that after a crash a
// reader finds the old file or the new one, never a part. Shared by the local store, the dirty
// region log, restore and the outage spool.

import { randomBytes } from 'node:crypto';
import { constants, fdatasync } from 'node:fs';
import { type FileHandle, open, rename, unlink } from 'node:fs/promises';
import { pwriteFully } from './positional-io.js';
import { dirname, join } from 'node:path';

/** Names of files being written; a crash can leave one behind, and readers skip them. */
export const TEMP_PREFIX = '.tmp-';

/** A fresh temporary name in `dir`. */
export function tempPath(dir: string): string {
  return join(dir, TEMP_PREFIX + randomBytes(8).toString('hex'));
}

/** fsync of a file (a read-only descriptor suffices). */
export async function syncFile(path: string): Promise<void> {
  const handle = await open(path, constants.O_RDONLY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Makes a directory's entries durable, so a name created, renamed or removed in it survives a
 * crash. File systems that cannot sync a directory say so (EINVAL, ENOTSUP…): there is nothing
 * more to do there, so that is not an error.
 */
export async function syncDirectory(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(dir, constants.O_RDONLY);
    await handle.sync();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'ENOTSUP' && code !== 'EISDIR' && code !== 'EPERM') throw error;
  } finally {
    await handle?.close();
  }
}

/** Creates `path` (it must not exist) holding `body`, synced unless `sync` is false. */
export async function writeNewFile(path: string, body: Uint8Array, options: { mode: number; sync?: boolean }): Promise<void> {
  const handle = await open(path, 'wx', options.mode);
  try {
    // One write call for the whole body (writeFile would split it into small chunks).
    await pwriteFully(handle.fd, body, 0);
    if (options.sync !== false) await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Replaces `path` with `body` atomically and durably; the directory must exist. */
export async function writeFileAtomic(path: string, body: Uint8Array, options: { mode: number }): Promise<void> {
  const dir = dirname(path);
  const temp = tempPath(dir);
  try {
    await writeNewFile(temp, body, { mode: options.mode });
    await rename(temp, path);
  } catch (error) {
    await unlink(temp).catch(() => undefined);
    throw error;
  }
  await syncDirectory(dir);
}

/** Bytes written between two early writebacks (WritebackPacer). */
export const WRITEBACK_EVERY = 64 * 1024 * 1024;

/**
 * Starts the disk writing back what a long writer (a restore) has written so far, one fdatasync
 * at a time in the background, every `every` bytes: the kernel otherwise holds it all dirty
 * until the final sync, which then takes as long as the disk needs for everything (measured: a
 * 512 MiB restore waited a second in its last fsync). The final sync stays the caller's.
 */
export class WritebackPacer {
  private unsynced = 0;
  private inFlight: Promise<void> | undefined;
  private failure: unknown;

  constructor(
    private readonly fd: number,
    private readonly every = WRITEBACK_EVERY,
  ) {}

  /** `bytes` more were written. */
  wrote(bytes: number): void {
    this.unsynced += bytes;
    if (this.unsynced < this.every || this.inFlight !== undefined || this.failure !== undefined) return;
    this.unsynced = 0;
    this.inFlight = new Promise<void>((resolve) => {
      fdatasync(this.fd, (error) => {
        if (error !== null) this.failure ??= error;
        this.inFlight = undefined;
        resolve();
      });
    });
  }

  /** Waits for the writeback in flight; throws what one failed with. */
  async settle(): Promise<void> {
    await this.inFlight;
    if (this.failure !== undefined) throw this.failure;
  }
}
