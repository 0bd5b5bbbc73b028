// Which runs the chain has, and which of them make up a point in time.
//
// The chain is a sequence of deltas (level 0, one point in time each). Every `fanout` (16)
// consecutive runs of level k - 1 that end at a multiple of fanout^k are merged into one span of
// level k (spans/<k>/<last>), so the PIT map of point p is the fold of at most
// (fanout - 1) runs per level: p written in base `fanout`, one run per unit of each digit
// (docs/FORMAT.md, "Spans"). A span that is missing or unreadable is replaced by its children,
// so only a missing delta that no span above it stands in for keeps a point from being built.
//
// Listing is lazy and narrow: finding the newest point lists each level only after what the
// level above covers (LIST with start-after), O(levels) requests whatever the history's length;
// older points list only the ranges they need. `full` lists everything (log, verify, status).

import { FormatError, StoreError, throwIfAborted } from '../errors.js';
import { ForgottenSet } from '../model/retention.js';
import type { ObjectStore } from '../store/types.js';
import { FORGET_PREFIX, decodeForgetRecord } from './records.js';
import { DELTA_PREFIX, SPAN_PREFIX, deltaKey, seqName, seqOfKey, spanKey, spanLevelPrefix } from './keys.js';

export interface Block {
  /** 0: a delta; k ≥ 1: a span of fanout^k points. */
  level: number;
  first: number;
  last: number;
}

export function blockKey(block: Block): string {
  return block.level === 0 ? deltaKey(block.last) : spanKey(block.level, block.last);
}

export function describeBlock(block: Block): string {
  return block.level === 0 ? `delta ${seqName(block.last)}` : `span ${block.level}/${seqName(block.last)} (points ${block.first}-${block.last})`;
}

/** Levels are at most this high (16^13 points is far beyond any history). */
const MAX_LEVEL = 13;

export class ChainIndex {
  /** Per level: the `last` of every block known to be stored. */
  private readonly present: Array<Set<number>> = [];
  /** Per level: ranges of `last` values that have been listed completely, [from, to]. */
  private readonly listed: Array<Array<[number, number]>> = [];
  /** Blocks listed but found unreadable, with why (a delta's reason is reported when it blocks a point). */
  private readonly unreadable = new Map<string, FormatError | undefined>();
  /** The highest level any span is stored at (0: no spans). */
  topLevel = 0;
  /** The newest point in time (0: none yet). */
  latest = 0;
  /** Store requests this index made (LISTs). */
  requests = 0;
  /** Points a forget removed from the history (forgets/): not points any more, and their deltas may be gone. */
  forgotten = new ForgottenSet();
  /** Forget records that cannot be read. */
  readonly unreadableForgets: Array<{ key: string; error: string }> = [];

  private constructor(
    private readonly store: ObjectStore,
    readonly fanout: number,
    /** Everything was listed (full()). */
    readonly complete: boolean,
  ) {
    for (let level = 0; level <= MAX_LEVEL; level++) {
      this.present.push(new Set());
      this.listed.push([]);
    }
  }

  /** The chain's end found in O(levels) LISTs: each level listed only after what the one above covers. */
  static async load(store: ObjectStore, fanout: number, volumeId: string, signal?: AbortSignal): Promise<ChainIndex> {
    const index = new ChainIndex(store, fanout, false);
    await index.loadForgotten(volumeId, signal);
    for (let level = 1; level <= MAX_LEVEL && (await index.anyAt(level, signal)); level++) index.topLevel = level;
    let covered = 0;
    for (let level = index.topLevel; level >= 1; level--) {
      await index.ensureListed(level, covered + 1, Infinity, signal);
      const size = fanout ** level;
      while (index.present[level]!.has(covered + size)) covered += size;
    }
    await index.ensureListed(0, Math.max(1, covered), Infinity, signal);
    index.latest = Math.max(covered, index.maxListed(0));
    return index;
  }

  /** Everything listed: which deltas are missing anywhere is known (log, verify, status). */
  static async full(store: ObjectStore, fanout: number, volumeId: string, signal?: AbortSignal): Promise<ChainIndex> {
    const index = new ChainIndex(store, fanout, true);
    await index.loadForgotten(volumeId, signal);
    // Spans first: a span is written after its last delta, so every span listed has its deltas
    // listed too (a writer committing meanwhile cannot make a listed point look missing).
    for await (const info of store.list(SPAN_PREFIX, { signal })) {
      const match = /^spans\/(\d{2})\/(\d{16})$/.exec(info.key);
      if (match === null) continue;
      const level = Number(match[1]);
      const last = Number(match[2]);
      if (level < 1 || level > MAX_LEVEL || last % fanout ** level !== 0) continue;
      index.present[level]!.add(last);
      index.topLevel = Math.max(index.topLevel, level);
    }
    index.requests++;
    for await (const info of store.list(DELTA_PREFIX, { signal })) {
      const seq = seqOfKey(info.key, DELTA_PREFIX);
      if (seq !== undefined) index.present[0]!.add(seq);
    }
    index.requests++;
    for (let level = 0; level <= MAX_LEVEL; level++) index.listed[level]!.push([0, Infinity]);
    let latest = index.maxListed(0);
    for (let level = 1; level <= index.topLevel; level++) for (const last of index.present[level]!) latest = Math.max(latest, last);
    index.latest = latest;
    return index;
  }

  /**
   * Deltas 1 … latest known not to be stored: all of them after full(), else those in the ranges
   * listed so far. A forgotten point's delta is not missing: prune deletes it once no kept point needs it.
   */
  missingDeltas(): number[] {
    const out: number[] = [];
    const listed = this.listed[0]!;
    for (const seq of this.forgotten.keptSeqs(1, this.latest)) {
      if (!this.present[0]!.has(seq) && listed.some(([a, b]) => a <= seq && seq <= b)) out.push(seq);
    }
    return out;
  }

  /** Reads every forget record of this volume (one LIST, a GET each); an unreadable one is an error. */
  private async loadForgotten(volumeId: string, signal?: AbortSignal): Promise<void> {
    const ranges: Array<[number, number]> = [];
    this.requests++;
    for await (const info of this.store.list(FORGET_PREFIX, { signal })) {
      let bytes: Uint8Array;
      try {
        bytes = await this.store.get(info.key, { signal });
      } catch (error) {
        if (error instanceof StoreError && error.kind === 'not-found') continue; // pruned meanwhile (merged into a newer one)
        throw error;
      }
      this.requests++;
      try {
        const record = decodeForgetRecord(bytes, info.key);
        if (record.volumeId !== volumeId) throw new FormatError('FORMAT_CORRUPT', `forget record ${info.key}`, `belongs to volume ${record.volumeId}, not ${volumeId}`);
        ranges.push(...record.ranges);
      } catch (error) {
        // Its points then look like points (missing ones, once pruned): reported, and prune refuses to run.
        if (!(error instanceof FormatError)) throw error;
        this.unreadableForgets.push({ key: info.key, error: error.message });
      }
    }
    this.forgotten = new ForgottenSet(ranges);
  }

  /** Stored delta seqs seen, ascending. */
  deltaSeqs(): number[] {
    return [...this.present[0]!].sort((a, b) => a - b);
  }

  /** Stored spans seen. */
  spans(): Block[] {
    const out: Block[] = [];
    for (let level = 1; level <= this.topLevel; level++) {
      for (const last of this.present[level]!) out.push(this.block(level, last));
    }
    return out.sort((a, b) => a.last - b.last || a.level - b.level);
  }

  block(level: number, last: number): Block {
    return { level, first: last - this.fanout ** level + 1, last };
  }

  /** A writer stored this block (a delta it committed, a span it wrote). */
  added(block: Block): void {
    this.present[block.level]!.add(block.last);
    this.unreadable.delete(blockKey(block));
    if (block.level > this.topLevel) this.topLevel = block.level;
    if (block.last > this.latest) this.latest = block.last;
  }

  /** A block that is listed but cannot be read: spans are replaced by their children from now on. */
  markUnreadable(block: Block, why?: FormatError): void {
    this.unreadable.set(blockKey(block), why);
  }

  async has(block: Block, signal?: AbortSignal): Promise<boolean> {
    // The block's siblings are listed with it (one LIST), as neighbours are usually asked next.
    const parent = this.fanout ** (block.level + 1);
    const parentLast = Math.ceil(block.last / parent) * parent;
    await this.ensureListed(block.level, parentLast - parent + this.fanout ** block.level, parentLast, signal);
    return this.present[block.level]!.has(block.last) && !this.unreadable.has(blockKey(block));
  }

  /**
   * The runs whose fold is point `p`'s PIT map, oldest first. Throws ChainGapError when a delta
   * it needs is missing (or unreadable) and no span above it stands in.
   */
  async cover(p: number, signal?: AbortSignal): Promise<Block[]> {
    const out: Block[] = [];
    let pos = 0;
    for (let level = this.levelFor(p); level >= 0; level--) {
      const size = this.fanout ** level;
      if (pos + size > p) continue;
      await this.ensureListed(level, pos + size, p, signal);
      for (; pos + size <= p; pos += size) out.push(...(await this.resolve(this.block(level, pos + size), p, signal)));
    }
    return out;
  }

  /** The newest delta at or before `p` that is missing or unreadable and keeps p from being built, if any. */
  async blockedBy(p: number, signal?: AbortSignal): Promise<number | undefined> {
    try {
      await this.cover(p, signal);
      return undefined;
    } catch (error) {
      if (error instanceof ChainGapError) return error.missing;
      throw error;
    }
  }

  /** The level of the largest block that fits in 1 … p. */
  private levelFor(p: number): number {
    let level = 0;
    while (level < MAX_LEVEL && this.fanout ** (level + 1) <= p) level++;
    return level;
  }

  private async resolve(block: Block, point: number, signal?: AbortSignal): Promise<Block[]> {
    if (this.present[block.level]!.has(block.last) && !this.unreadable.has(blockKey(block))) return [block];
    if (block.level === 0) throw new ChainGapError(block.last, point, this.unreadable.get(blockKey(block)));
    // Not stored (or unreadable): its children stand in for it.
    const childLevel = block.level - 1;
    const size = this.fanout ** childLevel;
    await this.ensureListed(childLevel, block.first + size - 1, block.last, signal);
    const out: Block[] = [];
    for (let last = block.first + size - 1; last <= block.last; last += size) out.push(...(await this.resolve(this.block(childLevel, last), point, signal)));
    return out;
  }

  private maxListed(level: number): number {
    let max = 0;
    for (const last of this.present[level]!) max = Math.max(max, last);
    return max;
  }

  private async anyAt(level: number, signal?: AbortSignal): Promise<boolean> {
    this.requests++;
    for await (const _ of this.store.list(spanLevelPrefix(level), { signal, limit: 1 })) return true;
    return false;
  }

  /** Lists level `level` for blocks whose last is in [from, to], unless already done. */
  private async ensureListed(level: number, from: number, to: number, signal?: AbortSignal): Promise<void> {
    const ranges = this.listed[level]!;
    if (ranges.some(([a, b]) => a <= from && to <= b)) return;
    throwIfAborted(signal);
    const prefix = level === 0 ? DELTA_PREFIX : spanLevelPrefix(level);
    const startAfter = from <= 1 ? undefined : `${prefix}${seqName(from - 1)}`;
    this.requests++;
    for await (const info of this.store.list(prefix, { signal, startAfter })) {
      if (startAfter !== undefined && info.key <= startAfter) continue; // a store that ignores startAfter
      const last = seqOfKey(info.key, prefix);
      if (last === undefined) continue;
      if (last > to) break;
      if (level > 0 && last % this.fanout ** level !== 0) continue; // not a span this format names
      this.present[level]!.add(last);
    }
    ranges.push([from, to]);
  }
}

/** A point in time lies past a missing (or unreadable) delta and no span stands in for it. */
export class ChainGapError extends FormatError {
  constructor(
    /** The missing delta. */
    readonly missing: number,
    /** The point in time that cannot be built. */
    readonly point: number,
    /** Why the delta cannot be read (undefined: it is missing). */
    readonly unreadable?: FormatError,
  ) {
    super(
      'FORMAT_CORRUPT',
      `delta ${seqName(missing)}`,
      `is ${unreadable === undefined ? 'missing' : `unreadable (${unreadable.message.slice(unreadable.what.length + 2)})`} and no span from it to point in time ${point} stands in for it, so ${missing === point ? 'that point' : `points ${missing} to ${point}`} cannot be built; ` +
        (missing === 1 ? 'no earlier point exists' : 'earlier points still restore') + ' (see cdp-s3 log and cdp-s3 verify)',
      { cause: unreadable },
    );
  }
}
