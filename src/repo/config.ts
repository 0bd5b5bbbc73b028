// The repository config object (key "config"): what volume this repository holds and how.

import { randomUUID } from 'node:crypto';
import { FormatError, InvalidArgumentError } from '../errors.js';
import { MAX_REGION_COUNT } from '../model/delta-map.js';
import { type Geometry, geometry } from '../model/regions.js';
import { type EncryptionScheme, ENCRYPTION_SCHEMES, type RepoKeys } from './crypto.js';
import { FORMAT_VERSION, FieldReader, openEnvelope, sealEnvelope } from './envelope.js';
import { COMPRESSION_LEVELS, type Compression } from './pieces.js';
import { MAX_LOCK_DAYS, type ObjectLockPolicy, checkObjectLockPolicy } from './retaining-store.js';
import { LOCK_MODES } from '../store/types.js';

export const CONFIG_KIND = { magic: 'CDPS3CFG', version: FORMAT_VERSION, what: 'config' } as const;

export const MIN_REGION_SIZE = 64 * 1024;
export const MAX_REGION_SIZE = 16 * 1024 * 1024;
export const DEFAULT_REGION_SIZE = 1024 * 1024;
export const DEFAULT_PACK_SIZE = 16 * 1024 * 1024;
export const DEFAULT_PAGE_REGIONS = 4096;
export const DEFAULT_SPAN_FANOUT = 16;
export const DEFAULT_BLOCK_SIZE = 4096;
/** With regions of at most 16 MiB, a region has at most 32768 blocks: a patch's bitmap is at most 4 KiB. */
export const MIN_BLOCK_SIZE = 512;
export const MIN_SPAN_FANOUT = 2;
export const MAX_SPAN_FANOUT = 64;
/**
 * The most regions a volume may have: 2^26 (64 TiB with 1 MiB regions). Maps are paged, so no
 * structure holds an entry per region; what is left per region is a bit in each region-set
 * bitmap (8 MiB each at this size, and protect keeps several) and byte offsets below 2^53.
 */
export const MAX_VOLUME_REGIONS = 2 ** 26;

export interface RepoConfig {
  volumeId: string;
  volumeSize: number;
  regionSize: number;
  /** Region identities: plain SHA-256, or HMAC-SHA256 under the identity key (encrypted repositories). */
  digest: 'sha256' | 'hmac-sha256';
  /** `aes-256-gcm`: every object but `config`'s header and `keys/` is sealed (docs/FORMAT.md, "Encryption"). */
  encryption: EncryptionScheme;
  /** How writers compress pieces unless a command says otherwise (readers take any). */
  compression: Compression;
  /** Packs are sealed once they hold at least this many bytes. */
  packSize: number;
  /** Regions per page of a stored map (a power of two). */
  pageRegions: number;
  /** Runs of one level merged into a span of the next (docs/FORMAT.md, "Spans"). */
  spanFanout: number;
  /** Bytes in a block, the unit of a patch (docs/FORMAT.md, "Patches"). */
  blockSize: number;
  /** ISO 8601 UTC. */
  created: string;
  /**
   * S3 Object Lock: every object the history needs is put under this retention (docs/FORMAT.md,
   * "Object Lock"). Kept in the clear in an encrypted config too, so the store layer knows it
   * before the password is asked for. Absent: no Object Lock.
   */
  objectLock?: ObjectLockPolicy;
}

export interface NewConfigOptions {
  volumeSize: number;
  regionSize?: number;
  packSize?: number;
  spanFanout?: number;
  /** Regions per stored page (a power of two from 256 to 65536); tests use small pages. */
  pageRegions?: number;
  /** Bytes in a block, the unit a write is shipped in (a power of two, 512 bytes to the region size). */
  blockSize?: number;
  now?: Date;
  /** The volume's id (default: a random UUID); the golden fixtures pin it. */
  volumeId?: string;
  /** `aes-256-gcm`: the repository is created through the store its keys unlock (unlock.ts createKeys). Default `none`. */
  encryption?: EncryptionScheme;
  compression?: Compression;
  objectLock?: { mode: string; days: number };
}

export function newConfig(options: NewConfigOptions): RepoConfig {
  const regionSize = options.regionSize ?? DEFAULT_REGION_SIZE;
  validateGeometry(options.volumeSize, regionSize);
  checkCapacity(options.volumeSize, regionSize);
  const packSize = options.packSize ?? DEFAULT_PACK_SIZE;
  if (!Number.isInteger(packSize) || packSize < 1 || packSize > 2 ** 31) {
    throw new InvalidArgumentError(`pack size must be 1 byte to 2 GiB, got ${packSize}`);
  }
  const spanFanout = options.spanFanout ?? DEFAULT_SPAN_FANOUT;
  if (!Number.isInteger(spanFanout) || spanFanout < MIN_SPAN_FANOUT || spanFanout > MAX_SPAN_FANOUT) {
    throw new InvalidArgumentError(`span fanout must be an integer from ${MIN_SPAN_FANOUT} to ${MAX_SPAN_FANOUT}, got ${spanFanout}`);
  }
  const pageRegions = options.pageRegions ?? DEFAULT_PAGE_REGIONS;
  if (!Number.isInteger(pageRegions) || pageRegions < 256 || pageRegions > 65536 || (pageRegions & (pageRegions - 1)) !== 0) {
    throw new InvalidArgumentError(`page size must be a power of two from 256 to 65536 regions, got ${pageRegions}`);
  }
  const blockSize = options.blockSize ?? Math.min(DEFAULT_BLOCK_SIZE, regionSize);
  const blockError = blockSizeError(blockSize, regionSize);
  if (blockError !== undefined) throw new InvalidArgumentError(blockError);
  return {
    volumeId: options.volumeId ?? randomUUID(),
    volumeSize: options.volumeSize,
    regionSize,
    digest: (options.encryption ?? 'none') === 'none' ? 'sha256' : 'hmac-sha256',
    encryption: options.encryption ?? 'none',
    compression: options.compression ?? 'fast',
    packSize,
    pageRegions,
    spanFanout,
    blockSize,
    created: (options.now ?? new Date()).toISOString(),
    ...(options.objectLock !== undefined ? { objectLock: checkObjectLockPolicy(options.objectLock) } : {}),
  };
}

/** Why `blockSize` cannot be the block size with these regions, or undefined. */
function blockSizeError(blockSize: number, regionSize: number): string | undefined {
  if (!Number.isInteger(blockSize) || blockSize < MIN_BLOCK_SIZE || blockSize > regionSize || (blockSize & (blockSize - 1)) !== 0) {
    return `block size must be a power of two from ${MIN_BLOCK_SIZE} bytes to the region size (${regionSize}), got ${blockSize}`;
  }
  return undefined;
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

/** Associated data of a sealed config. */
const CONFIG_AAD = Buffer.from('cdp-s3 config', 'utf8');
/** The inner envelope of an encrypted repository's config: the same fields, sealed. */
const SEALED_CONFIG_KIND = { magic: 'CDPS3CFS', version: FORMAT_VERSION, what: 'config' } as const;

/**
 * The config object. A plain repository's holds every field; an encrypted one's says only that it
 * is encrypted, and holds the fields sealed (a reader needs a key for them: docs/FORMAT.md).
 */
export function encodeConfig(config: RepoConfig, keys?: RepoKeys): Uint8Array {
  const { objectLock, ...fields } = config;
  const lock = objectLock === undefined ? {} : { objectLock: { mode: objectLock.mode, days: objectLock.days } };
  if (config.encryption === 'none') return sealEnvelope(CONFIG_KIND, { ...fields, ...lock });
  if (keys === undefined) throw new Error('an encrypted config needs the repository keys');
  const inner = sealEnvelope(SEALED_CONFIG_KIND, { ...fields });
  return sealEnvelope(CONFIG_KIND, { encryption: config.encryption, sealed: keys.sealer.seal(inner, CONFIG_AAD), ...lock });
}

/** The repository's Object Lock from its config object alone (in the clear also when encrypted), or undefined. */
export function configObjectLock(bytes: Uint8Array): ObjectLockPolicy | undefined {
  checkConfigVersion(bytes);
  return readObjectLock(new FieldReader(CONFIG_KIND.what, openEnvelope(CONFIG_KIND, bytes)));
}

function readObjectLock(r: FieldReader): ObjectLockPolicy | undefined {
  if (!r.has('objectLock')) return undefined;
  const value = r.raw('objectLock');
  if (typeof value !== 'object' || value === null) throw new FormatError('FORMAT_CORRUPT', CONFIG_KIND.what, 'field "objectLock" is not a map');
  const lock = new FieldReader(`${CONFIG_KIND.what} objectLock`, value as Record<string, unknown>);
  return { mode: lock.oneOf('mode', LOCK_MODES), days: lock.integer('days', 1, MAX_LOCK_DAYS) };
}

/** How the repository is encrypted, from its config object alone (before any key is at hand). */
export function configEncryption(bytes: Uint8Array): EncryptionScheme {
  checkConfigVersion(bytes);
  return new FieldReader(CONFIG_KIND.what, openEnvelope(CONFIG_KIND, bytes)).oneOf('encryption', ENCRYPTION_SCHEMES);
}

/** The cdp-s3 releases that wrote each older format version. */
const WRITTEN_BY: Record<number, string> = { 1: 'cdp-s3 0.1.x', 2: 'cdp-s3 0.2.x', 3: 'cdp-s3 0.3.x (main up to bc9fa43)', 4: 'cdp-s3 0.4.x (main up to 674f357)', 5: 'cdp-s3 0.5.x (main up to c1780af)' };

/**
 * The config, refusing repositories of other format versions by name: older ones (version 1,
 * before paged maps; version 2, before patches; version 3, before compaction) are not migrated; their points in time restore
 * with the cdp-s3 that wrote them.
 */
function checkConfigVersion(bytes: Uint8Array): void {
  const version = bytes.length >= 10 ? new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint16(8, true) : undefined;
  const magic = bytes.length >= 8 ? Buffer.from(bytes.subarray(0, 8)).toString('latin1') : '';
  if (magic === CONFIG_KIND.magic && version !== undefined && version !== FORMAT_VERSION) {
    throw new FormatError(
      'FORMAT_UNSUPPORTED_VERSION',
      CONFIG_KIND.what,
      `format version ${version} is not supported (this cdp-s3 reads version ${FORMAT_VERSION}): ` +
        (version < FORMAT_VERSION
          ? `the repository was made by an older cdp-s3 and is not migrated; restore what you need with the cdp-s3 that wrote it (${WRITTEN_BY[version] ?? 'an older release'}), then start a new repository with cdp-s3 init`
          : 'the repository was made by a newer cdp-s3; upgrade cdp-s3'),
    );
  }
}

/** The config; an encrypted repository's needs its keys (see configEncryption). */
export function decodeConfig(bytes: Uint8Array, keys?: RepoKeys): RepoConfig {
  checkConfigVersion(bytes);
  let r = new FieldReader(CONFIG_KIND.what, openEnvelope(CONFIG_KIND, bytes));
  const encryption = r.oneOf('encryption', ENCRYPTION_SCHEMES);
  const objectLock = readObjectLock(r);
  if (encryption !== 'none') {
    if (keys === undefined) throw new Error('an encrypted config needs the repository keys');
    const inner = keys.sealer.open(r.bytes('sealed'), CONFIG_AAD, CONFIG_KIND.what);
    r = new FieldReader(CONFIG_KIND.what, openEnvelope(SEALED_CONFIG_KIND, inner));
    if (r.oneOf('encryption', ENCRYPTION_SCHEMES) !== encryption) throw new FormatError('FORMAT_CORRUPT', CONFIG_KIND.what, 'its sealed fields name another encryption');
  }
  const config: RepoConfig = {
    volumeId: r.string('volumeId'),
    volumeSize: r.integer('volumeSize', 1),
    regionSize: r.integer('regionSize', MIN_REGION_SIZE, MAX_REGION_SIZE),
    digest: r.oneOf('digest', encryption === 'none' ? (['sha256'] as const) : (['hmac-sha256'] as const)),
    encryption,
    compression: r.oneOf('compression', COMPRESSION_LEVELS),
    packSize: r.integer('packSize', 1, 2 ** 31),
    pageRegions: r.integer('pageRegions', 256, 65536),
    spanFanout: r.integer('spanFanout', MIN_SPAN_FANOUT, MAX_SPAN_FANOUT),
    blockSize: r.integer('blockSize', MIN_BLOCK_SIZE, MAX_REGION_SIZE),
    created: r.string('created'),
    ...(objectLock !== undefined ? { objectLock } : {}),
  };
  validateGeometry(config.volumeSize, config.regionSize);
  const blockError = blockSizeError(config.blockSize, config.regionSize);
  if (blockError !== undefined) throw new FormatError('FORMAT_CORRUPT', CONFIG_KIND.what, blockError);
  if ((config.pageRegions & (config.pageRegions - 1)) !== 0) throw new FormatError('FORMAT_CORRUPT', CONFIG_KIND.what, `pageRegions ${config.pageRegions} is not a power of two`);
  if (Math.ceil(config.volumeSize / config.regionSize) > MAX_VOLUME_REGIONS) {
    throw new FormatError('FORMAT_CORRUPT', CONFIG_KIND.what, `the volume has more than ${MAX_VOLUME_REGIONS} regions`);
  }
  return config;
}
