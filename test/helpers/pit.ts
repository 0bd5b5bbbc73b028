// A point in time's whole map and a delta's entries, loaded at once for tests (small volumes):
// the product reads them page by page (PitView, RunReader).

import type { RegionLocation, StoredRegion } from '../../src/model/regions.js';
import { runEntries } from '../../src/model/pages.js';
import type { PitPage } from '../../src/model/pages.js';
import type { Repository } from '../../src/repo/repository.js';

export interface LoadedMap {
  seq: number;
  time: number;
  /** Where a region stored whole is (undefined: zeros); throws for a region stored as patches. */
  location(region: number): RegionLocation | undefined;
  stored(region: number): StoredRegion | undefined;
  digest(region: number): Uint8Array;
  isZero(region: number): boolean;
}

export async function loadMap(repo: Repository, seq: number): Promise<LoadedMap> {
  const index = await repo.index();
  const view = await repo.view(index, seq);
  const pages: PitPage[] = [];
  for await (const page of view.pages()) pages.push(page);
  const pageOf = (region: number): PitPage => pages[view.pageOf(region)]!;
  return {
    seq,
    time: view.time,
    location: (region) => {
      const stored = pageOf(region).stored(region);
      if (stored !== undefined && stored.patches.length > 0) throw new Error(`region ${region} is stored as a base with ${stored.patches.length} patches`);
      return stored?.base;
    },
    stored: (region) => pageOf(region).stored(region),
    digest: (region) => pageOf(region).digest(region),
    isZero: (region) => pageOf(region).isZero(region),
  };
}

export interface LoadedDelta {
  seq: number;
  /** Changed regions, ascending. */
  regions: number[];
  /** Pack keys its entries name. */
  packs: string[];
  /** How each changed region is stored (undefined: zeros). */
  locations: Map<number, StoredRegion | undefined>;
}

export async function loadDelta(repo: Repository, seq: number): Promise<LoadedDelta> {
  const run = await repo.readRun({ level: 0, first: seq, last: seq });
  const regions: number[] = [];
  const packs = new Set<string>();
  const locations = new Map<number, StoredRegion | undefined>();
  for (const ref of run.pages) {
    const page = (await run.page(ref.page))!;
    for (const { region, stored } of runEntries(page)) {
      regions.push(region);
      for (const piece of stored === undefined ? [] : [...(stored.base === undefined ? [] : [stored.base]), ...stored.patches]) packs.add(piece.pack);
      locations.set(region, stored);
    }
  }
  return { seq, regions, packs: [...packs], locations };
}
