// init: create a repository for one volume of a given size (or the size of a source).

import { CdpError, UsageError, throwIfAborted } from '../errors.js';
import { type RepoConfig, newConfig } from '../repo/config.js';
import { Repository } from '../repo/repository.js';
import type { ObjectStore } from '../store/types.js';
import { openVolume } from '../volume/source.js';

export interface InitOptions {
  store: ObjectStore;
  /** Volume size in bytes; give this or `from`. */
  size?: number;
  /** An image file or block device whose size becomes the volume's. */
  from?: string;
  /** Power of two from 64 KiB to 16 MiB. Default 1 MiB. */
  regionSize?: number;
  packSize?: number;
  /** Bytes in a block, the unit writes are shipped in (a power of two from 512 to the region size). Default 4 KiB. */
  blockSize?: number;
  /** Runs merged into a span of the next level (default 16; tests use small ones). */
  spanFanout?: number;
  signal?: AbortSignal;
}

export async function init(options: InitOptions): Promise<RepoConfig> {
  throwIfAborted(options.signal);
  if ((options.size === undefined) === (options.from === undefined)) {
    throw new UsageError('give the volume size with --size BYTES or a disk to take it from with --from SOURCE (one of the two)');
  }
  let size = options.size;
  if (options.from !== undefined) {
    const volume = await openVolume(options.from, 'read');
    size = volume.size;
    await volume.handle.close();
    if (size === 0) throw new CdpError('SOURCE', `${options.from} is empty; a volume needs at least one byte`);
  }
  let config: RepoConfig;
  try {
    config = newConfig({ volumeSize: size!, regionSize: options.regionSize, packSize: options.packSize, spanFanout: options.spanFanout, blockSize: options.blockSize });
  } catch (error) {
    throw new UsageError((error as Error).message, { cause: error });
  }
  await Repository.init(options.store, config, options.signal);
  return config;
}
