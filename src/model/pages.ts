// Pages: the unit in which region maps are stored and read. The volume's regions are cut into
// pages of `pageRegions` consecutive regions (a power of two, 4096 by default); page p holds
// regions [p * pageRegions, (p + 1) * pageRegions).
//
// A RunPage is what one run (a delta, or a span merging many) says about the regions of one
// page: only the regions it changed, ascending, each with its digest and how its bytes are
// stored (whole, or a base with patches: model/patches.ts), or that it became zeros. A PitPage is one page of a point in time's PIT map: every region
// of the page, the fold of the runs that make up the point in time. Pure: no I/O.

import { DIGEST_BYTES, type Geometry, type PatchLocation, type StoredRegion, ZERO_REGION } from './regions.js';
import { FirstUseTable } from '../util/first-use-table.js';

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
  /** Per entry: byte offset of the region's piece (its base's) inside its pack (0 for zeros). */
  readonly entryOffset: Uint32Array;
  /** Per entry: bytes of that piece's stored frame (0 for zeros). */
  readonly entryLength: Uint32Array;
  /** Per entry: the region's SHA-256, 32 bytes each (zeros for a zero region). */
  readonly digests: Uint8Array;
  /** Patched entries (absent when no entry of the page has patches): */
  readonly patches?: PagePatches;
}

/**
 * The patches of a page's entries: per entry how many (0 for a region stored whole or zeros),
 * then all of them back to back in entry order, each applied in order on its entry's base
 * (entryPack/entryOffset; ZERO_PACK there is a base of zeros).
 */
export interface PagePatches {
  counts: Uint8Array;
  pack: Uint16Array;
  offset: Uint32Array;
  length: Uint32Array;
}

/** Most patches one entry may have (its count is a byte). */
export const MAX_ENTRY_PATCHES = 255;

/** What entry i of a run page stores (undefined: zeros), reading its patches from `patchAt` on. */
function entryOf(page: RunPage, i: number, patchAt: number): StoredRegion | undefined {
  const pack = page.entryPack[i]!;
  const base = pack === ZERO_PACK ? undefined : { pack: page.packs[pack]!, offset: page.entryOffset[i]!, length: page.entryLength[i]! };
  const count = page.patches?.counts[i] ?? 0;
  if (count === 0) return base === undefined ? undefined : { base, patches: [] };
  const patches: PatchLocation[] = [];
  for (let j = patchAt; j < patchAt + count; j++) {
    patches.push({ pack: page.packs[page.patches!.pack[j]!]!, offset: page.patches!.offset[j]!, length: page.patches!.length[j]! });
  }
  return { base, patches };
}

/** Every entry of a run page, in order: region, digest (a view) and how it is stored (undefined: zeros). */
export function* runEntries(page: RunPage): Generator<{ index: number; region: number; digest: Uint8Array; stored: StoredRegion | undefined }> {
  let patchAt = 0;
  for (let i = 0; i < page.regions.length; i++) {
    const stored = entryOf(page, i, patchAt);
    patchAt += page.patches?.counts[i] ?? 0;
    yield { index: i, region: page.regions[i]!, digest: page.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), stored };
  }
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
  stored: StoredRegion | undefined;
  digest: Uint8Array;
}

/** Collects one page's entries in any order (a later set of a region replaces the earlier). */
export class PageBuilder {
  private readonly entries = new Map<number, PendingEntry>();

  constructor(readonly page: number) {}

  get size(): number {
    return this.entries.size;
  }

  /** Records how `region` is stored (undefined: zeros) and its digest. */
  set(region: number, stored: StoredRegion | undefined, digest: Uint8Array): void {
    if (stored !== undefined && stored.patches.length > MAX_ENTRY_PATCHES) throw new Error(`region ${region} has ${stored.patches.length} patches; at most ${MAX_ENTRY_PATCHES}`);
    this.entries.set(region, { stored, digest: stored === undefined ? ZERO_DIGEST : digest.slice() });
  }

  /** Takes every entry of `page` (a newer run's entries override what is here). */
  setAll(page: RunPage): void {
    for (const entry of runEntries(page)) this.entries.set(entry.region, { stored: entry.stored, digest: entry.digest });
  }

  build(): RunPage {
    const regions = Uint32Array.from(this.entries.keys()).sort();
    const n = regions.length;
    const entryPack = new Uint16Array(n);
    const entryOffset = new Uint32Array(n);
    const entryLength = new Uint32Array(n);
    const digests = new Uint8Array(n * DIGEST_BYTES);
    // Canonical: each pack listed once, in the order of its first use (bases and patches alike).
    const packTable = new FirstUseTable<string>();
    const packs = packTable.values;
    const packOf = (name: string): number => packTable.indexOf(name);
    const counts = new Uint8Array(n);
    const patchPack: number[] = [];
    const patchOffset: number[] = [];
    const patchLength: number[] = [];
    for (let i = 0; i < n; i++) {
      const entry = this.entries.get(regions[i]!)!;
      const base = entry.stored?.base;
      if (base === undefined) entryPack[i] = ZERO_PACK;
      else {
        entryPack[i] = packOf(base.pack);
        entryOffset[i] = base.offset;
        entryLength[i] = base.length;
      }
      for (const patch of entry.stored?.patches ?? []) {
        patchPack.push(packOf(patch.pack));
        patchOffset.push(patch.offset);
        patchLength.push(patch.length);
      }
      counts[i] = entry.stored?.patches.length ?? 0;
      digests.set(entry.digest, i * DIGEST_BYTES);
    }
    if (packs.length >= ZERO_PACK) throw new Error(`page ${this.page} names ${packs.length} packs; at most ${ZERO_PACK - 1}`);
    const patches =
      patchPack.length === 0 ? undefined : { counts, pack: Uint16Array.from(patchPack), offset: Uint32Array.from(patchOffset), length: Uint32Array.from(patchLength) };
    return { page: this.page, regions, packs, entryPack, entryOffset, entryLength, digests, ...(patches === undefined ? {} : { patches }) };
  }
}

/**
 * The page with its stored pieces moved (repack): `moveTo(pack, offset)` says where a piece (a
 * region's base or a patch) is now, or undefined where it stays. Undefined when nothing moved.
 */
export function relocatePage(page: RunPage, moveTo: (pack: string, offset: number) => { pack: string; offset: number } | undefined): RunPage | undefined {
  const moved = (piece: PatchLocation): PatchLocation => {
    const to = moveTo(piece.pack, piece.offset);
    return to === undefined ? piece : { pack: to.pack, offset: to.offset, length: piece.length };
  };
  let changed = false;
  const builder = new PageBuilder(page.page);
  for (const entry of runEntries(page)) {
    const stored = entry.stored;
    if (stored === undefined) {
      builder.set(entry.region, undefined, entry.digest);
      continue;
    }
    const base = stored.base === undefined ? undefined : moved(stored.base);
    const patches = stored.patches.map(moved);
    if (base !== stored.base || patches.some((patch, i) => patch !== stored.patches[i])) changed = true;
    builder.set(entry.region, { base, patches }, entry.digest);
  }
  return changed ? builder.build() : undefined;
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
  private lengthOf: Uint32Array | undefined;
  private digests: Uint8Array | undefined;
  private readonly packTable = new FirstUseTable<string>();
  /** Regions (offsets in the page) stored as a base with patches: the patches. */
  private readonly patchesAt = new Map<number, PatchLocation[]>();
  private patchCount = 0;

  constructor(
    readonly page: number,
    /** The page's first region. */
    readonly first: number,
    /** Regions in the page (the last page of a volume may be shorter). */
    readonly count: number,
  ) {}

  /** No region of the page holds data (every one is zeros). */
  get empty(): boolean {
    return this.packOf === undefined || (this.patchesAt.size === 0 && this.packOf.every((pack) => pack === ZERO_REGION));
  }

  /** Overlays a newer run's entries for this page. */
  apply(run: RunPage): void {
    const packOf = (this.packOf ??= new Uint32Array(this.count).fill(ZERO_REGION));
    const offsetOf = (this.offsetOf ??= new Uint32Array(this.count));
    const lengthOf = (this.lengthOf ??= new Uint32Array(this.count));
    const digests = (this.digests ??= new Uint8Array(this.count * DIGEST_BYTES));
    const ids = run.packs.map((name) => this.packTable.indexOf(name));
    let patchAt = 0;
    for (let i = 0; i < run.regions.length; i++) {
      const at = run.regions[i]! - this.first;
      const pack = run.entryPack[i]!;
      packOf[at] = pack === ZERO_PACK ? ZERO_REGION : ids[pack]!;
      offsetOf[at] = run.entryOffset[i]!;
      lengthOf[at] = run.entryLength[i]!;
      digests.set(run.digests.subarray(i * DIGEST_BYTES, (i + 1) * DIGEST_BYTES), at * DIGEST_BYTES);
      const count = run.patches?.counts[i] ?? 0;
      const before = this.patchesAt.get(at);
      if (before !== undefined) this.patchCount -= before.length;
      if (count === 0) this.patchesAt.delete(at);
      else {
        const patches: PatchLocation[] = [];
        for (let j = patchAt; j < patchAt + count; j++) {
          patches.push({ pack: run.packs[run.patches!.pack[j]!]!, offset: run.patches!.offset[j]!, length: run.patches!.length[j]! });
        }
        this.patchesAt.set(at, patches);
        this.patchCount += count;
      }
      patchAt += count;
    }
  }

  has(region: number): boolean {
    return region >= this.first && region < this.first + this.count;
  }

  isZero(region: number): boolean {
    return this.packOf === undefined || (this.packOf[region - this.first] === ZERO_REGION && !this.patchesAt.has(region - this.first));
  }

  /** The region's digest (a view; all zeros for a zero region). */
  digest(region: number): Uint8Array {
    if (this.digests === undefined) return ZERO_DIGEST;
    const at = region - this.first;
    return this.digests.subarray(at * DIGEST_BYTES, (at + 1) * DIGEST_BYTES);
  }

  /** How the region is stored, or undefined: zeros. */
  stored(region: number): StoredRegion | undefined {
    if (this.packOf === undefined) return undefined;
    const at = region - this.first;
    const pack = this.packOf[at]!;
    const base = pack === ZERO_REGION ? undefined : { pack: this.packTable.values[pack]!, offset: this.offsetOf![at]!, length: this.lengthOf![at]! };
    const patches = this.patchesAt.get(at) ?? [];
    return base === undefined && patches.length === 0 ? undefined : { base, patches };
  }

  /** Bytes of memory this page holds (for caches). */
  get bytes(): number {
    return 64 + (this.packOf === undefined ? 0 : this.count * (12 + DIGEST_BYTES)) + this.packTable.values.length * 64 + this.patchesAt.size * 64 + this.patchCount * 48;
  }

}
