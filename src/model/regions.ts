// Regions: the volume's geometry, where a region's bytes are stored, and the kinds of points in
// time. The maps themselves are pages (pages.ts): the pure model of the chain.

import { type Hash, type Hmac, createHash, createHmac } from 'node:crypto';

/**
 * A region's identity (its digest in a map): the SHA-256 of its bytes, or in an encrypted
 * repository HMAC-SHA256 under the identity key, so a stored digest says nothing about content
 * while scans and dedup compare identities as before (docs/FORMAT.md, "Encryption").
 */
export function identityHash(key: Uint8Array | undefined): Hash | Hmac {
  return key === undefined ? createHash('sha256') : createHmac('sha256', key);
}

/** In a map's pack column: "this region is all zeros; no bytes are stored". */
export const ZERO_REGION = 0xffffffff;
export const DIGEST_BYTES = 32;

export type DeltaKind = 'base' | 'host' | 'fixup';
export const DELTA_KINDS: readonly DeltaKind[] = ['base', 'host', 'fixup'];

export interface Geometry {
  volumeSize: number;
  regionSize: number;
  regionCount: number;
}

export function geometry(volumeSize: number, regionSize: number): Geometry {
  return { volumeSize, regionSize, regionCount: Math.ceil(volumeSize / regionSize) };
}

/** Bytes in region `index`: regionSize, except a shorter last region. */
export function regionLength(g: Geometry, index: number): number {
  return Math.min(g.regionSize, g.volumeSize - index * g.regionSize);
}

/** Where a stored piece (a region's bytes, or a patch) is: its frame in a pack (docs/FORMAT.md, "Pieces"). */
export interface RegionLocation {
  pack: string;
  offset: number;
  /** Bytes of the stored frame (not of the region: frames may be compressed and sealed). */
  length: number;
}

/** Where a patch is (docs/FORMAT.md, "Patches"): a piece like any other. */
export type PatchLocation = RegionLocation;

/**
 * How a region's content is stored: a whole copy (`base`, no patches), or a base (a whole copy,
 * or undefined: zeros) with patches applied in order. A map says "zeros" with no StoredRegion.
 */
export interface StoredRegion {
  base: RegionLocation | undefined;
  patches: readonly PatchLocation[];
}

/** A region stored whole at `location`. */
export function wholeAt(location: RegionLocation): StoredRegion {
  return { base: location, patches: [] };
}

/** Every stored piece a region's content is made of: its base (if stored) and its patches. */
export function piecesOf(stored: StoredRegion): RegionLocation[] {
  return stored.base === undefined ? [...stored.patches] : [stored.base, ...stored.patches];
}

/**
 * A name for the stored content: the same for every region that shares it (deduplicated), and
 * different for different content (a patch belongs to one chain, so the last piece names it).
 */
export function storedId(stored: StoredRegion): string {
  const last = stored.patches.at(-1) ?? stored.base!;
  return stored.patches.length === 0 ? `${last.pack}@${last.offset}` : `${last.pack}@${last.offset}+${stored.patches.length}`;
}
