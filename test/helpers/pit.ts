// A point in time's whole map and a delta's entries, loaded at once for tests (small volumes):
// the product reads them page by page (PitView, RunReader).

import type { RegionLocation } from '../../src/model/regions.js';
import type { PitPage } from '../../src/model/pages.js';
import type { Repository } from '../../src/repo/repository.js';

export interface LoadedMap {
  seq: number;
  time: number;
  location(region: number): RegionLocation | undefined;
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
    location: (region) => pageOf(region).location(region),
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
  locations: Map<number, RegionLocation | undefined>;
}

export async function loadDelta(repo: Repository, seq: number): Promise<LoadedDelta> {
  const run = await repo.readRun({ level: 0, first: seq, last: seq });
  const regions: number[] = [];
  const packs = new Set<string>();
  const locations = new Map<number, RegionLocation | undefined>();
  for (const ref of run.pages) {
    const page = (await run.page(ref.page))!;
    page.regions.forEach((region, i) => {
      regions.push(region);
      const pack = page.entryPack[i]!;
      const location = pack === 0xffff ? undefined : { pack: page.packs[pack]!, offset: page.entryOffset[i]! };
      if (location !== undefined) packs.add(location.pack);
      locations.set(region, location);
    });
  }
  return { seq, regions, packs: [...packs], locations };
}
