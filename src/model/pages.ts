// Pages: the unit in which region maps are stored and read. The volume's regions are cut into
// pages of `pageRegions` consecutive regions (a power of two, 4096 by default); page p holds
// regions [p * pageRegions, (p + 1) * pageRegions).
//
// A RunPage is what one run (a delta, or a span merging many) says about the regions of one
// page: only the regions it changed, ascending, each with its digest and where its bytes are
// (or that it became zeros). A PitPage is one page of a point in time's PIT map: every region
// of the page, the fold of the runs that make up the point in time. Pure: no I/O.

import { DIGEST_BYTES, type Geometry, type RegionLocation, ZERO_REGION } from './regions.js';

/** In RunPage.entryPack: the region is all zeros (no bytes stored). */
export const ZERO_PACK = 0xffff;
const ZERO_DIGEST = new Uint8Array(DIGEST_BYTES);

export interface RunPage {
  readonly page: number;
  /** Absolute region indices, strictly ascending, all inside this page. */
  readonly regions: Uint32Array;
  /** Pack keys the entries name (page-local table). */
  readonly packs: readonly string[];
  /** Per entry: index into packs, or ZERO_PACK. */
  readonly entryPack: Uint16Array;
  /** Per entry: byte offset of the region inside its pack (0 for zeros). */
  readonly entryOffset: Uint32Array;
  /** Per entry: the region's SHA-256, 32 bytes each (zeros for a zero region). */
  readonly digests: Uint8Array;
}

export function pageOf(region: number, pageRegions: number): number {
  return Math.floor(region / pageRegions);
}

export function pageCount(g: Geometry, pageRegions: number): number {
  return Math.ceil(g.regionCount / pageRegions);
}

/** Regions [first, end) of page `page`. */
export function pageSpan(g: Geometry, pageRegions: number, page: number): { first: number; end: number } {
  const first = page * pageRegions;
  return { first, end: Math.min(g.regionCount, first + pageRegions) };
}

interface PendingEntry {
  location: RegionLocation | undefined;
  digest: Uint8Array;
}

/** Collects one page's entries in any order (a later set of a region replaces the earlier). */
export class PageBuilder {
  private readonly entries = new Map<number, PendingEntry>();

  constructor(readonly page: number) {}

  get size(): number {
    return this.entries.size;
  }

  set(region: number, location: RegionLocation | undefined, digest: Uint8Array): void {
    this.entries.set(region, { location, digest: location === undefined ? ZERO_DIGEST : digest.slice() });
  }

  /** Takes every entry of `page` (a newer run's entries override what is here). */
  setAll(page: RunPage): void {
    for (let i = 0; i < page.regions.length; i++) {
      const pack = page.entryPack[i]!;
      const location = pack === ZERO_PACK ? undefined : { pack: page.packs[pack]!, offset: page.entryOffset[i]! };
      this.entries.set(page.regions[i]!, { location, digest: page.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES) });
    }
  }

  build(): RunPage {
    const regions = Uint32Array.from(this.entries.keys()).sort();
    const n = regions.length;
    const entryPack = new Uint16Array(n);
    const entryOffset = new Uint32Array(n);
    const digests = new Uint8Array(n * DIGEST_BYTES);
    const packs: string[] = [];
    const packIndex = new Map<string, number>();
    for (let i = 0; i < n; i++) {
      const entry = this.entries.get(regions[i]!)!;
      if (entry.location === undefined) entryPack[i] = ZERO_PACK;
      else {
        let index = packIndex.get(entry.location.pack);
        if (index === undefined) {
          index = packs.length;
          packs.push(entry.location.pack);
          packIndex.set(entry.location.pack, index);
        }
        entryPack[i] = index;
        entryOffset[i] = entry.location.offset;
      }
      digests.set(entry.digest, i * DIGEST_BYTES);
    }
    return { page: this.page, regions, packs, entryPack, entryOffset, digests };
  }
}

/** The union of one page's entries from several runs, oldest first: the newest entry of each region wins. */
export function mergeRunPages(page: number, pages: readonly RunPage[]): RunPage {
  const builder = new PageBuilder(page);
  for (const p of pages) builder.setAll(p);
  return builder.build();
}

/**
 * One page of a PIT map: every region of the page with its digest and location. Regions no run
 * names are zeros (never written).
 */
export class PitPage {
  // Allocated by the first apply(): a page no run names (a thin volume's holes) costs nothing.
  private packOf: Uint32Array | undefined;
  private offsetOf: Uint32Array | undefined;
  private digests: Uint8Array | undefined;
  private readonly packNames: string[] = [];
  private readonly packIds = new Map<string, number>();

  constructor(
    readonly page: number,
    /** The page's first region. */
    readonly first: number,
    /** Regions in the page (the last page of a volume may be shorter). */
    readonly count: number,
  ) {}

  /** No region of the page holds data (every one is zeros). */
  get empty(): boolean {
    return this.packOf === undefined || this.packOf.every((pack) => pack === ZERO_REGION);
  }

  /** Overlays a newer run's entries for this page. */
  apply(run: RunPage): void {
    const packOf = (this.packOf ??= new Uint32Array(this.count).fill(ZERO_REGION));
    const offsetOf = (this.offsetOf ??= new Uint32Array(this.count));
    const digests = (this.digests ??= new Uint8Array(this.count * DIGEST_BYTES));
    const ids = run.packs.map((name) => this.packId(name));
    for (let i = 0; i < run.regions.length; i++) {
      const at = run.regions[i]! - this.first;
      const pack = run.entryPack[i]!;
      packOf[at] = pack === ZERO_PACK ? ZERO_REGION : ids[pack]!;
      offsetOf[at] = run.entryOffset[i]!;
      digests.set(run.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), at * DIGEST_BYTES);
    }
  }

  has(region: number): boolean {
    return region >= this.first && region < this.first + this.count;
  }

  isZero(region: number): boolean {
    return this.packOf === undefined || this.packOf[region - this.first] === ZERO_REGION;
  }

  /** The region's digest (a view; all zeros for a zero region). */
  digest(region: number): Uint8Array {
    if (this.digests === undefined) return ZERO_DIGEST;
    const at = region - this.first;
    return this.digests.subarray(at * DIGEST_BYTES, (at + 1) * DIGEST_BYTES);
  }

  location(region: number): RegionLocation | undefined {
    if (this.packOf === undefined) return undefined;
    const at = region - this.first;
    const pack = this.packOf[at]!;
    return pack === ZERO_REGION ? undefined : { pack: this.packNames[pack]!, offset: this.offsetOf![at]! };
  }

  /** Bytes of memory this page holds (for caches). */
  get bytes(): number {
    return 64 + (this.packOf === undefined ? 0 : this.count * (8 + DIGEST_BYTES)) + this.packNames.length * 64;
  }

  private packId(name: string): number {
    let id = this.packIds.get(name);
    if (id === undefined) {
      id = this.packNames.length;
      this.packNames.push(name);
      this.packIds.set(name, id);
    }
    return id;
  }
}
