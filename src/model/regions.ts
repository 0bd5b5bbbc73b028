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
