// Building a run: a writer sets the entries of the regions a delta (or a span) changes, and the
// builder keeps them per page. A small run stays in memory and is stored inline in its root; once
// it passes INLINE_ENTRIES its finished pages go to page packs as they are closed, so a base of a
// 16 TiB volume holds a page or two in memory, not the whole map.

import { FormatError } from '../errors.js';
import type { StoredRegion } from '../model/regions.js';
import { PageBuilder, type RunPage, pageOf } from '../model/pages.js';
import type { ObjectStore } from '../store/types.js';
import { PagePackWriter, type PagePackWriterOptions } from './page-packs.js';
import { type PageRef, type RootContext, decodePage, encodePage } from './run-codec.js';

/**
 * Runs with at most this many entries are stored inline in their root (about 170 KiB): a page
 * costs an envelope and its pack table, so a run of a few entries per page is smaller inline
 * (measured: a first-level span of 1600 scattered entries was 2.1 times its deltas' size paged).
 */
export const INLINE_ENTRIES = 4096;

export interface RunBuilderOptions extends PagePackWriterOptions {
  inlineEntries?: number;
  /** A page just put in a page pack (a cache keeps it: the spans that merge this run read it next). */
  onPageStored?: (ref: PageRef, page: RunPage) => void;
}

export class RunBuilder {
  private readonly openPages = new Map<number, PageBuilder>();
  private readonly closedPages = new Map<number, PageRef>();
  private closedEntries = 0;
  private pager: PagePackWriter | undefined;

  constructor(
    private readonly store: ObjectStore,
    /** The run's last point in time: names its page packs. */
    private readonly seq: number,
    private readonly context: RootContext,
    private readonly options: RunBuilderOptions = {},
  ) {}

  /** Entries so far (a region set twice counts once). */
  get count(): number {
    let n = this.closedEntries;
    for (const page of this.openPages.values()) n += page.size;
    return n;
  }

  /** Page-pack bytes written so far (metadata a large run costs besides its root). */
  get pageBytes(): number {
    return this.pager?.bytesWritten ?? 0;
  }

  get pagePacks(): number {
    return this.pager?.packsWritten ?? 0;
  }

  /** Records what `region` holds at the run's point in time (undefined: zeros). */
  async set(region: number, stored: StoredRegion | undefined, digest: Uint8Array): Promise<void> {
    const page = pageOf(region, this.context.pageRegions);
    let builder = this.openPages.get(page);
    if (builder === undefined) builder = await this.openPage(page);
    builder.set(region, stored, digest);
  }

  /** Adds every entry of a page (a newer page's entries override). */
  async setAll(page: RunPage): Promise<void> {
    let builder = this.openPages.get(page.page);
    if (builder === undefined) builder = await this.openPage(page.page);
    builder.setAll(page);
  }

  /** The caller sets no region below `region` from now on (except to reopen): those pages can go. */
  async closeBelow(region: number): Promise<void> {
    const limit = pageOf(region, this.context.pageRegions);
    for (const [page, builder] of this.openPages) {
      if (page < limit) await this.closePage(page, builder);
    }
  }

  /** Closes every page and returns the run's page refs, ascending (all inline, or all in page packs). */
  async finish(): Promise<PageRef[]> {
    for (const [page, builder] of this.openPages) await this.closePage(page, builder);
    await this.pager?.finish();
    return [...this.closedPages.values()].sort((a, b) => a.page - b.page);
  }

  private async openPage(page: number): Promise<PageBuilder> {
    const builder = new PageBuilder(page);
    const closed = this.closedPages.get(page);
    if (closed !== undefined) {
      // Set again after it was closed (a scan's host changes after its copy): start from what it held.
      builder.setAll(closed.inline ?? (await this.readBack(closed)));
      this.closedPages.delete(page);
      this.closedEntries -= closed.count;
    }
    this.openPages.set(page, builder);
    return builder;
  }

  private async closePage(page: number, builder: PageBuilder): Promise<void> {
    this.openPages.delete(page);
    if (builder.size === 0) return;
    const built = builder.build();
    this.closedEntries += built.regions.length;
    this.closedPages.set(page, { page, count: built.regions.length, ref: undefined, inline: built });
    if (this.pager === undefined && this.count > (this.options.inlineEntries ?? INLINE_ENTRIES)) {
      // Too large to be inline: from now on pages go to page packs, the ones kept so far first.
      this.pager = new PagePackWriter(this.store, this.seq, this.options);
      for (const ref of [...this.closedPages.values()].sort((a, b) => a.page - b.page)) await this.spill(ref);
      return;
    }
    if (this.pager !== undefined) await this.spill(this.closedPages.get(page)!);
  }

  /** Moves a closed page from memory into the page packs. */
  private async spill(ref: PageRef): Promise<void> {
    if (ref.inline === undefined) return;
    const blob = encodePage(ref.inline, this.context.volumeId, this.context.pageRegions);
    const stored: PageRef = { page: ref.page, count: ref.count, ref: await this.pager!.add(blob), inline: undefined };
    this.closedPages.set(ref.page, stored);
    this.options.onPageStored?.(stored, ref.inline);
  }

  private async readBack(ref: PageRef): Promise<RunPage> {
    const bytes = this.pager?.readBack(ref.ref!) ?? (await this.store.get(ref.ref!.pack, { range: { offset: ref.ref!.offset, length: ref.ref!.length }, signal: this.options.signal }));
    if (bytes === undefined) throw new FormatError('FORMAT_CORRUPT', `page ${ref.page}`, 'was written by this run but cannot be read back');
    const what = `run ${this.seq} page ${ref.page}`;
    return decodePage(this.options.blobs?.open(bytes, what) ?? bytes, ref.page, this.context, `run ${this.seq}`);
  }
}
