// Which regions of a sparse file hold data: the file's allocated extents, found with
// lseek(SEEK_DATA / SEEK_HOLE), so a backup or scan of a thin 16 TiB image reads only what is
// allocated and takes the holes for zeros without reading them. Node has no lseek; the optional
// dependency fs-ext provides it (a small native addon). Without it, or on a file system that
// cannot tell, every region counts as data and is read, as for block devices.

import { createRequire } from 'node:module';
import { DeltaMap } from '../model/delta-map.js';
import type { Geometry } from '../model/regions.js';
import { preadFully } from '../util/positional-io.js';

const SEEK_DATA = 3;
const SEEK_HOLE = 4;

type Seek = (fd: number, offset: number, whence: number) => number;

let seek: Seek | null | undefined;

/** fs-ext's lseek, or null when it is not installed (or cannot load here). */
function lseek(): Seek | null {
  if (seek === undefined) {
    try {
      const fsExt = createRequire(import.meta.url)('fs-ext') as { seekSync: Seek };
      seek = fsExt.seekSync;
    } catch {
      seek = null;
    }
  }
  return seek;
}

/** Whether this process can find a file's holes (tests require it under CI). */
export function canFindHoles(): boolean {
  return lseek() !== null;
}

/**
 * The regions of the file behind `fd` that hold any allocated byte, or undefined when that
 * cannot be told (no lseek, a file system without SEEK_DATA, a block device): then every region
 * must be read. Holes in the middle of a region do not make it a hole; only regions wholly in
 * holes are left out. Two lseek calls per extent, however large the file.
 */
export function regionsWithData(fd: number, g: Geometry, isBlockDevice: boolean): DeltaMap | undefined {
  const find = lseek();
  if (find === null || isBlockDevice) return undefined;
  const map = new DeltaMap(g.regionCount);
  let at = 0;
  try {
    while (at < g.volumeSize) {
      let data: number;
      try {
        data = find(fd, at, SEEK_DATA);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENXIO') break; // no data after `at`
        throw error;
      }
      if (data >= g.volumeSize) break;
      const hole = Math.min(find(fd, data, SEEK_HOLE), g.volumeSize);
      map.setRange(Math.floor(data / g.regionSize), Math.ceil(hole / g.regionSize));
      at = hole;
    }
  } catch {
    map.dispose();
    return undefined; // the file system cannot tell (EINVAL): read everything
  }
  return map;
}

/**
 * Fills `target` with the bytes of the file at `position`, reading only its allocated extents
 * there and zero-filling the holes in memory: reading a hole makes the kernel put zeroed pages
 * in the page cache (measured: a third of protect's time under random writes to a thin image).
 * Where holes cannot be found, a plain read. Throws at the end of the file.
 */
export async function readAllocated(fd: number, target: Uint8Array, position: number): Promise<void> {
  const find = lseek();
  const end = position + target.length;
  let at = position;
  if (find !== null) {
    try {
      while (at < end) {
        let data: number;
        try {
          data = find(fd, at, SEEK_DATA);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'ENXIO') throw error;
          data = end; // no data after `at`: the rest is a hole
        }
        if (data > at) target.fill(0, at - position, Math.min(data, end) - position);
        if (data >= end) {
          at = end;
          break;
        }
        const hole = Math.min(find(fd, data, SEEK_HOLE), end);
        await readExactly(fd, target.subarray(data - position, hole - position), data);
        at = hole;
      }
      return;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EOF') throw error;
      // The file system cannot tell: read the rest as it is.
    }
  }
  await readExactly(fd, target.subarray(at - position), at);
}

async function readExactly(fd: number, target: Uint8Array, position: number): Promise<void> {
  const n = await preadFully(fd, target, position);
  if (n < target.length) throw Object.assign(new Error(`unexpected end of the file at byte ${position + n}`), { code: 'EOF' });
}
