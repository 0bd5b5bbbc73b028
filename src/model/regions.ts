// Regions: the volume's geometry, where a region's bytes are stored, and the kinds of points in
// time. The maps themselves are pages (pages.ts): the pure model of the chain.

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

/** Where a region's bytes are: a pack and the offset in it. */
export interface RegionLocation {
  pack: string;
  offset: number;
}

/** Where a patch is: its bytes in a pack (docs/FORMAT.md, "Patches"). */
export interface PatchLocation {
  pack: string;
  offset: number;
  length: number;
}

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
