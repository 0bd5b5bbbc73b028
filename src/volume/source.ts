// Opening the primary volume: an image file or a block device. A block device's size comes
// from the kernel (/sys/dev/block/MAJOR:MINOR/size, in 512-byte sectors), since stat says 0.

import { constants } from 'node:fs';
import type { Stats } from 'node:fs';
import { type FileHandle, open, readFile, stat } from 'node:fs/promises';
import { CdpError } from '../errors.js';

export interface OpenVolume {
  path: string;
  handle: FileHandle;
  size: number;
  isBlockDevice: boolean;
  /** Identity of the file, to tell "the same file" apart from "the same name". */
  dev: number;
  ino: number;
  rdev: number;
}

/** Size in bytes of the file or block device at `path` (an open handle's stat). */
async function sizeOf(path: string, st: { isBlockDevice(): boolean; size: number; rdev: number }): Promise<number> {
  if (!st.isBlockDevice()) return st.size;
  try {
    const sectors = Number((await readFile(`${sysBlockDir(st.rdev)}/size`, 'utf8')).trim());
    return sectors * 512;
  } catch (error) {
    throw new CdpError('SOURCE', `${path}: cannot read the block device's size from /sys (${(error as Error).message})`, { cause: error });
  }
}

/** What a path is, in words, when it is neither a regular file nor a block device. */
function kindOf(st: Stats): string {
  if (st.isFIFO()) return 'a FIFO (named pipe)';
  if (st.isSocket()) return 'a socket';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isDirectory()) return 'a directory';
  return 'neither a regular file nor a block device';
}

function notADisk(path: string, st: Stats): CdpError {
  return new CdpError('SOURCE', `${path} is ${kindOf(st)}, not a disk: give an image file or a block device`);
}

function openFailed(path: string, mode: 'read' | 'write', error: unknown): CdpError {
  const code = (error as NodeJS.ErrnoException).code;
  const why =
    code === 'ENOENT'
      ? 'does not exist; check the path'
      : code === 'EACCES' || code === 'EPERM'
        ? `is not ${mode === 'read' ? 'readable' : 'writable'} by this user; run with the needed permissions`
        : `cannot be opened (${code ?? (error as Error).message})`;
  return new CdpError('SOURCE', `${path} ${why}`, { cause: error });
}

export async function openVolume(path: string, mode: 'read' | 'write'): Promise<OpenVolume> {
  // Look before opening: open() of a FIFO blocks until a writer appears (in a thread-pool thread
  // that no signal can interrupt), and a character device is not a disk either.
  let before: Stats;
  try {
    before = await stat(path);
  } catch (error) {
    throw openFailed(path, mode, error);
  }
  if (!before.isFile() && !before.isBlockDevice()) throw notADisk(path, before);
  let handle: FileHandle;
  try {
    handle = await open(path, mode === 'read' ? constants.O_RDONLY : constants.O_RDWR);
  } catch (error) {
    throw openFailed(path, mode, error);
  }
  const st = await handle.stat();
  if (!st.isFile() && !st.isBlockDevice()) {
    await handle.close();
    throw notADisk(path, st);
  }
  return { path, handle, size: await sizeOf(path, st), isBlockDevice: st.isBlockDevice(), dev: st.dev, ino: st.ino, rdev: st.rdev };
}

/** The block device's directory in /sys, named by its device number. */
function sysBlockDir(rdev: number): string {
  const major = Math.floor(rdev / 256) & 0xfff; // Linux dev_t: major in bits 8-19, minor in 0-7 and 20-31
  const minor = (rdev & 0xff) | ((Math.floor(rdev / 2 ** 20) & 0xfff) << 8);
  return `/sys/dev/block/${major}:${minor}`;
}

/**
 * True if writing one path would overwrite the other: the same file by identity (device and
 * inode, so symlinks, hard links and bind mounts are seen through), the same block device under
 * any name, or a loop device and its backing file. False when either cannot be looked at.
 */
export async function sameStorage(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  if (x === undefined || y === undefined) return false;
  if (x.isBlockDevice() && y.isBlockDevice()) return x.rdev === y.rdev;
  if (x.isBlockDevice() !== y.isBlockDevice()) {
    const [device, file] = x.isBlockDevice() ? [x, y] : [y, x];
    const backing = await readFile(`${sysBlockDir(device.rdev)}/loop/backing_file`, 'utf8').catch(() => undefined);
    const backed = backing === undefined ? undefined : await stat(backing.trimEnd()).catch(() => undefined);
    return backed !== undefined && backed.dev === file.dev && backed.ino === file.ino;
  }
  return x.dev === y.dev && x.ino === y.ino;
}
