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
import { FORGET_PREFIX, decodeCompactionRecord, decodeForgetRecord } from './records.js';
import { COMPACTION_PREFIX, DELTA_PREFIX, SPAN_PREFIX, deltaKey, generationName, parseRunKey, seqName, spanKey, spanLevelPrefix } from './keys.js';

export interface Block {
  /** 0: a delta; k ≥ 1: a span of fanout^k points. */
  level: number;
  first: number;
  last: number;
  /** Which stored version: 0 as writers store it, g as compaction g rewrote it (docs/FORMAT.md, "Compaction"). */
  generation?: number;
}

export function blockKey(block: Block): string {
  const generation = block.generation ?? 0;
  return block.level === 0 ? deltaKey(block.last, generation) : spanKey(block.level, block.last, generation);
}

export function describeBlock(block: Block): string {
  const generation = (block.generation ?? 0) === 0 ? '' : ` (compaction ${block.generation})`;
  return block.level === 0 ? `delta ${seqName(block.last)}${generation}` : `span ${block.level}/${seqName(block.last)} (points ${block.first}-${block.last})${generation}`;
}

/** The position a block stands at, whatever its version: the same for every generation. */
export function positionKey(block: Block): string {
  return blockKey({ level: block.level, first: block.first, last: block.last });
}

/** Levels are at most this high (16^13 points is far beyond any history). */
const MAX_LEVEL = 13;

export class ChainIndex {
  /** Per level: the `last` of every block known to be stored, and its generation (the highest committed one listed). */
  private readonly present: Array<Map<number, number>> = [];
  /** Per level: every generation listed at each `last` (committed or not); full() only. */
  private readonly versions: Array<Map<number, number[]>> = [];
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
  /** The newest committed compaction (0: none): runs of a higher generation are not part of the chain. */
  generation = 0;
  /** The forgotten set that compaction folded away: its deltas, and spans of its points only, are empty. */
  compacted = new ForgottenSet();
  /** Compaction records listed (the newest is `generation`'s). */
  readonly compactionKeys: string[] = [];
  /** The highest generation seen anywhere (records, or runs of a compaction that never committed). */
  highestGeneration = 0;

  private constructor(
    private readonly store: ObjectStore,
    readonly fanout: number,
    /** Everything was listed (full()). */
    readonly complete: boolean,
  ) {
    for (let level = 0; level <= MAX_LEVEL; level++) {
      this.present.push(new Map());
      this.versions.push(new Map());
      this.listed.push([]);
    }
  }

  /** The chain's end found in O(levels) LISTs: each level listed only after what the one above covers. */
  static async load(store: ObjectStore, fanout: number, volumeId: string, signal?: AbortSignal): Promise<ChainIndex> {
    const index = new ChainIndex(store, fanout, false);
    await index.loadCompaction(volumeId, signal);
    await index.loadForgotten(volumeId, signal);
    for (let level = 1; level <= MAX_LEVEL && (await index.anyAt(level, signal)); level++) index.topLevel = level;
    let covered = 0;
    for (let level = index.topLevel; level >= 1; level--) {
      await index.ensureListed(level, covered + 1, Infinity, signal);
      const size = fanout ** level;
      // An empty position (compacted away) covers its points too: their runs may be pruned.
      while (index.present[level]!.has(covered + size) || index.isEmpty(index.block(level, covered + size))) covered += size;
    }
    await index.ensureListed(0, Math.max(1, covered), Infinity, signal);
    index.latest = Math.max(covered, index.maxListed(0));
    return index;
  }

  /** Everything listed: which deltas are missing anywhere is known (log, verify, status). */
  static async full(store: ObjectStore, fanout: number, volumeId: string, signal?: AbortSignal): Promise<ChainIndex> {
    const index = new ChainIndex(store, fanout, true);
    await index.loadCompaction(volumeId, signal);
    await index.loadForgotten(volumeId, signal);
    // Spans first: a span is written after its last delta, so every span listed has its deltas
    // listed too (a writer committing meanwhile cannot make a listed point look missing).
    for await (const info of store.list(SPAN_PREFIX, { signal })) {
      const match = /^spans\/(\d{2})\/(.*)$/.exec(info.key);
      if (match === null) continue;
      const level = Number(match[1]);
      const parsed = parseRunKey(match[2]!, '');
      if (parsed === undefined || level < 1 || level > MAX_LEVEL || parsed.last % fanout ** level !== 0) continue;
      if (index.saw(level, parsed.last, parsed.generation)) index.topLevel = Math.max(index.topLevel, level);
    }
    index.requests++;
    for await (const info of store.list(DELTA_PREFIX, { signal })) {
      const parsed = parseRunKey(info.key, DELTA_PREFIX);
      if (parsed !== undefined) index.saw(0, parsed.last, parsed.generation);
    }
    index.requests++;
    for (let level = 0; level <= MAX_LEVEL; level++) index.listed[level]!.push([0, Infinity]);
    let latest = index.maxListed(0);
    for (let level = 1; level <= index.topLevel; level++) for (const last of index.present[level]!.keys()) latest = Math.max(latest, last);
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
      if (!this.present[0]!.has(seq) && !this.isEmpty(this.block(0, seq)) && listed.some(([a, b]) => a <= seq && seq <= b)) out.push(seq);
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

  /**
   * Reads the newest compaction record (one LIST, one GET): which generation of the runs is the
   * chain, and what it folded away. One that cannot be read is an error: which runs are the
   * chain would be unknown.
   */
  private async loadCompaction(volumeId: string, signal?: AbortSignal): Promise<void> {
    this.requests++;
    for await (const info of this.store.list(COMPACTION_PREFIX, { signal })) {
      const match = /^compactions\/(\d{8})$/.exec(info.key);
      if (match === null) continue;
      this.compactionKeys.push(info.key);
      this.generation = Math.max(this.generation, Number(match[1]));
    }
    this.highestGeneration = this.generation;
    if (this.generation === 0) return;
    const key = `${COMPACTION_PREFIX}${generationName(this.generation)}`;
    this.requests++;
    let bytes: Uint8Array;
    try {
      bytes = await this.store.get(key, { signal });
    } catch (error) {
      if (error instanceof StoreError && error.kind === 'not-found') throw new FormatError('FORMAT_CORRUPT', `compaction record ${key}`, 'was listed but is missing', { cause: error });
      throw error;
    }
    const record = decodeCompactionRecord(bytes, key, this.generation);
    if (record.volumeId !== volumeId) throw new FormatError('FORMAT_CORRUPT', `compaction record ${key}`, `belongs to volume ${record.volumeId}, not ${volumeId}`);
    this.compacted = new ForgottenSet(record.ranges);
  }

  /** A listed run version; returns whether it is part of the chain (a committed generation). */
  private saw(level: number, last: number, generation: number): boolean {
    if (this.complete) {
      const all = this.versions[level]!.get(last) ?? [];
      if (!all.includes(generation)) all.push(generation);
      this.versions[level]!.set(last, all);
    }
    this.highestGeneration = Math.max(this.highestGeneration, generation);
    if (generation > this.generation) return false; // a compaction that has not committed (or never will)
    this.present[level]!.set(last, Math.max(this.present[level]!.get(last) ?? 0, generation));
    return true;
  }

  /** Whether a position holds nothing under the committed compaction: a forgotten delta, or a span of forgotten points only. */
  isEmpty(block: Block): boolean {
    return this.generation > 0 && this.compacted.coversAll(block.first, block.last);
  }

  /** Stored delta seqs seen, ascending (the chain's versions; empty positions left out). */
  deltaSeqs(): number[] {
    return [...this.present[0]!.keys()].filter((seq) => !this.isEmpty(this.block(0, seq))).sort((a, b) => a - b);
  }

  /** Stored spans seen (the chain's versions; empty positions left out). */
  spans(): Block[] {
    const out: Block[] = [];
    for (let level = 1; level <= this.topLevel; level++) {
      for (const last of this.present[level]!.keys()) {
        const block = this.block(level, last);
        if (!this.isEmpty(block)) out.push(block);
      }
    }
    return out.sort((a, b) => a.last - b.last || a.level - b.level);
  }

  /**
   * Stored run versions that are not the chain's (full() only): older generations of a rewritten
   * position, versions at positions that are empty now, and versions of a compaction that never
   * committed. What prune may delete, once no reader can still be using them.
   */
  supersededVersions(): Block[] {
    const out: Block[] = [];
    for (let level = 0; level <= MAX_LEVEL; level++) {
      for (const [last, generations] of this.versions[level]!) {
        const position = this.block(level, last);
        const chosen = this.isEmpty(position) ? -1 : (this.present[level]!.get(last) ?? -1);
        for (const generation of generations) if (generation !== chosen) out.push({ ...position, generation });
      }
    }
    return out.sort((a, b) => a.last - b.last || a.level - b.level || (a.generation ?? 0) - (b.generation ?? 0));
  }

  /** The block at a position, as the chain stores it (its generation as listed so far). */
  block(level: number, last: number): Block {
    const generation = this.present[level]!.get(last) ?? 0;
    const block: Block = { level, first: last - this.fanout ** level + 1, last };
    if (generation > 0) block.generation = generation;
    return block;
  }

  /** The chain's version of a position, listed first (undefined: not stored, empty, or unreadable). */
  async stored(level: number, last: number, signal?: AbortSignal): Promise<Block | undefined> {
    const position = this.block(level, last);
    if (!(await this.has(position, signal)) || this.isEmpty(position)) return undefined;
    return this.block(level, last);
  }

  /** A writer stored this block (a delta it committed, a span it wrote). */
  added(block: Block): void {
    this.present[block.level]!.set(block.last, block.generation ?? 0);
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
    return this.present[block.level]!.has(block.last) && !this.unreadable.has(blockKey(this.block(block.level, block.last)));
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

  /**
   * The chain as compaction `generation` will make it, for the compaction to build on: the same
   * runs, with the positions `compacted` covers empty. The compaction adds its rewritten runs
   * (added()) as it stores them, lowest level first. From a full() index only.
   */
  successor(generation: number, compacted: ForgottenSet): ChainIndex {
    if (!this.complete) throw new Error('successor() needs a full index');
    const next = new ChainIndex(this.store, this.fanout, true);
    for (let level = 0; level <= MAX_LEVEL; level++) {
      for (const [last, gen] of this.present[level]!) next.present[level]!.set(last, gen);
      next.listed[level]!.push([0, Infinity]);
    }
    next.topLevel = this.topLevel;
    next.latest = this.latest;
    next.forgotten = this.forgotten;
    next.generation = generation;
    next.highestGeneration = Math.max(this.highestGeneration, generation);
    next.compacted = compacted;
    return next;
  }

  /** The runs that make up span `block`'s points, oldest first: its children, a missing one replaced by its own (recursively), empty ones left out. */
  async childrenOf(block: Block, signal?: AbortSignal): Promise<Block[]> {
    const size = this.fanout ** (block.level - 1);
    const out: Block[] = [];
    for (let last = block.first + size - 1; last <= block.last; last += size) out.push(...(await this.resolve(this.block(block.level - 1, last), block.last, signal)));
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

  private async resolve(position: Block, point: number, signal?: AbortSignal): Promise<Block[]> {
    if (this.isEmpty(position)) return []; // folded away by the compaction: nothing to apply
    const block = this.block(position.level, position.last);
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
    for (const last of this.present[level]!.keys()) max = Math.max(max, last);
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
      const parsed = parseRunKey(info.key, prefix);
      if (parsed === undefined || parsed.last < from) continue; // another key, or a later generation of the run before
      const { last, generation } = parsed;
      if (last > to) break;
      if (level > 0 && last % this.fanout ** level !== 0) continue; // not a span this format names
      this.saw(level, last, generation);
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
