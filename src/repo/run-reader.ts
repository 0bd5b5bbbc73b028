// A stored run (a delta or a span) as readers use it: its root in memory, its pages on demand.

import type { RunPage } from '../model/pages.js';
import { type Block, describeBlock } from './chain-index.js';
import type { PageRef, PointSummary, RunRoot } from './run-codec.js';

/** Where a run's pages and summary blobs are read from (the repository, with its caches). */
export interface RunSource {
  readPage(ref: PageRef, what: string, signal?: AbortSignal): Promise<RunPage>;
  readSummaries(run: RunReader, signal?: AbortSignal): Promise<PointSummary[]>;
}

export class RunReader {
  private readonly byPage = new Map<number, PageRef>();

  constructor(
    readonly block: Block,
    readonly root: RunRoot,
    private readonly source: RunSource,
    /** Bytes of the root object. */
    readonly rootBytes: number,
  ) {
    for (const page of root.pages) this.byPage.set(page.page, page);
  }

  get what(): string {
    return describeBlock(this.block);
  }

  /** Entries in the run: regions its points changed. */
  get count(): number {
    return this.root.count;
  }

  hasPage(page: number): boolean {
    return this.byPage.has(page);
  }

  pageRef(page: number): PageRef | undefined {
    return this.byPage.get(page);
  }

  /** The run's entries in page `page`, or undefined if it changed nothing there. */
  async page(page: number, signal?: AbortSignal): Promise<RunPage | undefined> {
    const ref = this.byPage.get(page);
    if (ref === undefined) return undefined;
    return ref.inline ?? this.source.readPage(ref, this.what, signal);
  }

  /** Pages it has entries in, ascending. */
  get pages(): readonly PageRef[] {
    return this.root.pages;
  }

  /** Every changed region, ascending. */
  async *regions(signal?: AbortSignal): AsyncGenerator<number> {
    for (const ref of this.root.pages) {
      const page = await this.page(ref.page, signal);
      yield* page!.regions;
    }
  }

  /** The summaries of the points it covers, first to last. */
  async summaries(signal?: AbortSignal): Promise<PointSummary[]> {
    const delta = this.root.delta;
    if (delta !== undefined) {
      return [{ seq: this.block.last, kind: delta.kind, start: delta.start, end: delta.end, count: this.root.count, storedBytes: delta.storedBytes }];
    }
    return this.root.summaries ?? this.source.readSummaries(this, signal);
  }

  /** The point in time it ends at: when its last point was taken. */
  get end(): number {
    return this.root.end;
  }
}
