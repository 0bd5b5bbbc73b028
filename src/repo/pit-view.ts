// The PIT map of one point in time, read page by page: each page is the fold of that page in
// the runs that make up the point (ChainIndex.cover), built on demand and kept in an LRU cache,
// so memory is bounded by the cache whatever the volume's size.

import { LRUCache } from 'lru-cache';
import { FormatError } from '../errors.js';
import type { Geometry } from '../model/regions.js';
import { PitPage, type RunPage, pageCount, pageSpan } from '../model/pages.js';
import type { RunReader } from './run-reader.js';

/** Default bytes of folded pages a view keeps (a 4096-region page is about 170 KB). */
export const DEFAULT_VIEW_CACHE_BYTES = 32 * 1024 * 1024;

/**
 * Given a span whose page could not be read, the runs that stand in for it (its children), or
 * undefined when nothing can (a delta).
 */
export type StandIn = (run: RunReader, signal?: AbortSignal) => Promise<RunReader[] | undefined>;

export class PitView {
  private readonly cache: LRUCache<number, PitPage>;
  private readonly loading = new Map<number, Promise<PitPage>>();
  private runList: RunReader[];

  constructor(
    readonly geometry: Geometry,
    readonly pageRegions: number,
    /** The point in time (0: the empty volume before the first). */
    readonly seq: number,
    /** Its end time, ms since the epoch (0 for seq 0). */
    readonly time: number,
    /** The runs folded, oldest first. */
    runs: readonly RunReader[],
    cacheBytes = DEFAULT_VIEW_CACHE_BYTES,
    private readonly standIn?: StandIn,
    cache?: LRUCache<number, PitPage>,
  ) {
    this.runList = [...runs];
    this.cache = cache ?? new LRUCache<number, PitPage>({ maxSize: Math.max(1, cacheBytes), sizeCalculation: (page) => page.bytes });
  }

  /** The runs folded, oldest first. */
  get runs(): readonly RunReader[] {
    return this.runList;
  }

  get pageTotal(): number {
    return pageCount(this.geometry, this.pageRegions);
  }

  pageOf(region: number): number {
    return Math.floor(region / this.pageRegions);
  }

  /** The folded page, from the cache or built from the runs' pages. */
  page(page: number, signal?: AbortSignal): Promise<PitPage> {
    const cached = this.cache.get(page);
    if (cached !== undefined) return Promise.resolve(cached);
    let pending = this.loading.get(page);
    if (pending === undefined) {
      pending = this.build(page, signal).finally(() => this.loading.delete(page));
      this.loading.set(page, pending);
    }
    return pending;
  }

  /** The page holding `region` (cached only; undefined if it is not at hand). */
  cachedPageOf(region: number): PitPage | undefined {
    return this.cache.get(this.pageOf(region));
  }

  /** Pages [from, to) in order, the next one being read while the caller works on this one. */
  async *pages(signal?: AbortSignal, from = 0, to = this.pageTotal): AsyncGenerator<PitPage> {
    let next: Promise<PitPage> | undefined = from < to ? this.page(from, signal) : undefined;
    for (let page = from; page < to; page++) {
      const current = next!;
      next = page + 1 < to ? this.page(page + 1, signal) : undefined;
      next?.catch(() => {}); // awaited next round; a failure while this one is used must not go unhandled
      yield await current;
    }
  }

  /**
   * The view of the point that `run` (a delta just committed on top of this point) makes: the
   * same cache, with the run folded into the pages it holds. This view must not be used after.
   */
  async extend(run: RunReader, seq: number, time: number, signal?: AbortSignal): Promise<PitView> {
    for (const ref of run.pages) {
      const cached = this.cache.get(ref.page);
      if (cached === undefined) continue;
      const entries = await run.page(ref.page, signal);
      if (entries !== undefined) cached.apply(entries);
    }
    this.loading.clear();
    return new PitView(this.geometry, this.pageRegions, seq, time, [...this.runList, run], 0, this.standIn, this.cache);
  }

  private async build(page: number, signal?: AbortSignal): Promise<PitPage> {
    const { first, end } = pageSpan(this.geometry, this.pageRegions, page);
    for (;;) {
      const runs = this.runList;
      const parts = await Promise.all(runs.map((run) => run.page(page, signal).catch((error: unknown) => error)));
      const bad = parts.findIndex((part) => part instanceof Error);
      if (bad >= 0) {
        // A span's page is derived data: its children stand in for it (in every page, from now on).
        const error = parts[bad] as Error;
        const children = error instanceof FormatError ? await this.standIn?.(runs[bad]!, signal) : undefined;
        if (children === undefined) throw error;
        if (this.runList === runs) this.runList = [...runs.slice(0, bad), ...children, ...runs.slice(bad + 1)];
        continue;
      }
      const folded = new PitPage(page, first, end - first);
      for (const part of parts as Array<RunPage | undefined>) if (part !== undefined) folded.apply(part);
      this.cache.set(page, folded);
      return folded;
    }
  }
}
