// The repository config object (key "config"): what volume this repository holds and how.

import { randomUUID } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';
import { MAX_REGION_COUNT } from '../model/delta-map.js';
import { type Geometry, geometry } from '../model/pit-map.js';
import { FieldReader, openEnvelope, sealEnvelope } from './envelope.js';

export const CONFIG_KIND = { magic: 'CDPS3CFG', version: 1, what: 'config' } as const;

export const MIN_REGION_SIZE = 64 * 1024;
export const MAX_REGION_SIZE = 16 * 1024 * 1024;
export const DEFAULT_REGION_SIZE = 1024 * 1024;
export const DEFAULT_PACK_SIZE = 16 * 1024 * 1024;
export const DEFAULT_CHECKPOINT_INTERVAL = 16;
/**
 * The most regions a new volume may have. Backup's deduplication index and restore's fetch plan
 * hold one Map entry per stored region, and a JavaScript Map holds at most 2^24 entries; the
 * checkpoint (about 72 bytes a region at worst) then also stays well inside one 4 GiB object.
 * Paged maps will raise this.
 */
export const MAX_VOLUME_REGIONS = 2 ** 24;

export interface RepoConfig {
  volumeId: string;
  volumeSize: number;
  regionSize: number;
  digest: 'sha256';
  /** Packs are sealed once they hold at least this many bytes. */
  packSize: number;
  /** A checkpoint PIT map is written after every this-many deltas. */
  checkpointInterval: number;
  /** ISO 8601 UTC. */
  created: string;
}

export interface NewConfigOptions {
  volumeSize: number;
  regionSize?: number;
  packSize?: number;
  checkpointInterval?: number;
  now?: Date;
}

export function newConfig(options: NewConfigOptions): RepoConfig {
  const regionSize = options.regionSize ?? DEFAULT_REGION_SIZE;
  validateGeometry(options.volumeSize, regionSize);
  checkCapacity(options.volumeSize, regionSize);
  const packSize = options.packSize ?? DEFAULT_PACK_SIZE;
  if (!Number.isInteger(packSize) || packSize < 1 || packSize > 2 ** 31) {
    throw new InvalidArgumentError(`pack size must be 1 byte to 2 GiB, got ${packSize}`);
  }
  const checkpointInterval = options.checkpointInterval ?? DEFAULT_CHECKPOINT_INTERVAL;
  if (!Number.isInteger(checkpointInterval) || checkpointInterval < 1) {
    throw new InvalidArgumentError(`checkpoint interval must be a positive integer, got ${checkpointInterval}`);
  }
  return {
    volumeId: randomUUID(),
    volumeSize: options.volumeSize,
    regionSize,
    digest: 'sha256',
    packSize,
    checkpointInterval,
    created: (options.now ?? new Date()).toISOString(),
  };
}

export function validateGeometry(volumeSize: number, regionSize: number): void {
  if (!Number.isInteger(regionSize) || regionSize < MIN_REGION_SIZE || regionSize > MAX_REGION_SIZE || (regionSize & (regionSize - 1)) !== 0) {
    throw new InvalidArgumentError(`region size must be a power of two from 64 KiB to 16 MiB, got ${regionSize}`);
  }
  if (!Number.isSafeInteger(volumeSize) || volumeSize <= 0) {
    throw new InvalidArgumentError(`volume size must be a positive number of bytes, got ${volumeSize}`);
  }
  if (Math.ceil(volumeSize / regionSize) > MAX_REGION_COUNT) {
    throw new InvalidArgumentError(`a ${volumeSize}-byte volume has too many ${regionSize}-byte regions; choose larger regions`);
  }
}

/** Refuses a new volume with more regions than this version can hold (MAX_VOLUME_REGIONS). */
function checkCapacity(volumeSize: number, regionSize: number): void {
  const regions = Math.ceil(volumeSize / regionSize);
  if (regions <= MAX_VOLUME_REGIONS) return;
  const larger =
    regionSize < MAX_REGION_SIZE
      ? `choose larger regions (--region-size ${binarySize(MAX_REGION_SIZE, '')} holds up to ${binarySize(MAX_REGION_SIZE * MAX_VOLUME_REGIONS)})`
      : 'this version cannot protect it as one volume';
  throw new InvalidArgumentError(
    `a volume of ${binarySize(volumeSize)} in ${binarySize(regionSize)} regions needs ${regions} regions; at most ${MAX_VOLUME_REGIONS} fit ` +
      `(${binarySize(regionSize * MAX_VOLUME_REGIONS)} with ${binarySize(regionSize)} regions): ${larger}`,
  );
}

/** Bytes in the largest binary unit that divides them exactly ("16 TiB", "1 MiB", "1000000 bytes"). */
function binarySize(bytes: number, space = ' '): string {
  for (const [unit, size] of [['TiB', 2 ** 40], ['GiB', 2 ** 30], ['MiB', 2 ** 20], ['KiB', 2 ** 10]] as const) {
    if (bytes >= size && bytes % size === 0) return `${bytes / size}${space}${unit}`;
  }
  return space === ' ' ? `${bytes} bytes` : String(bytes);
}

export function configGeometry(config: RepoConfig): Geometry {
  return geometry(config.volumeSize, config.regionSize);
}

export function encodeConfig(config: RepoConfig): Uint8Array {
  return sealEnvelope(CONFIG_KIND, { ...config });
}

export function decodeConfig(bytes: Uint8Array): RepoConfig {
  const r = new FieldReader(CONFIG_KIND.what, openEnvelope(CONFIG_KIND, bytes));
  const config: RepoConfig = {
    volumeId: r.string('volumeId'),
    volumeSize: r.integer('volumeSize', 1),
    regionSize: r.integer('regionSize', MIN_REGION_SIZE, MAX_REGION_SIZE),
    digest: r.oneOf('digest', ['sha256'] as const),
    packSize: r.integer('packSize', 1, 2 ** 31),
    checkpointInterval: r.integer('checkpointInterval', 1),
    created: r.string('created'),
  };
  validateGeometry(config.volumeSize, config.regionSize);
  return config;
}
