// Compaction: folds the points `forget` removed into the kept points after them, so nothing the
// kept points do not need stays referenced (docs/FORMAT.md, "Compaction").
//
// A run holds the changes of an interval of points, (from, to]. Once points are forgotten, each
// run should hold (the kept point before its first, the last kept point in it]: a kept delta
// takes in the forgotten points before it, a span whose last points are forgotten stops at its
// last kept one, and a run of forgotten points only is empty. Compaction g stores every run whose
// interval that changes under a new key (`<run key>.<g>`), lowest level first (a span is the merge
// of its children as compaction g makes them), then commits them all at once with the record
// `compactions/<g>`. Readers take generation g from then on; before, they never see its runs.
// The older versions stay until prune deletes them after its grace, so a reader that listed the
// chain before the commit reads what it listed.
//
// The caller holds the writer lock, so no run is written meanwhile (protect compacts with its
// shipping paused).

import { FormatError, StoreError, throwIfAborted } from '../errors.js';
import type { ForgottenSet } from '../model/retention.js';
import { type Block, type ChainIndex, blockKey, describeBlock } from '../repo/chain-index.js';
import { COMPACTION_PREFIX, generationName } from '../repo/keys.js';
import { encodeCompactionRecord } from '../repo/records.js';
import type { Repository } from '../repo/repository.js';
import type { RunReader } from '../repo/run-reader.js';

export interface CompactResult {
  /** The generation committed (unchanged when there was nothing to fold). */
  generation: number;
  /** Runs stored anew (deltas and spans). */
  rewritten: number;
  /** Positions that became empty (forgotten deltas, spans of forgotten points only). */
  emptied: number;
  /** Bytes of metadata stored (roots, page packs). */
  metadataBytes: number;
}

/**
 * Reads a run of the chain for prune, compaction or repack: one that cannot be read stops them
 * all before anything is deleted (what it names is unknown).
 */
export async function readChainRun(repo: Repository, block: Block, signal?: AbortSignal): Promise<RunReader> {
  try {
    return await repo.readRun(block, signal);
  } catch (error) {
    throw unreadableRun(block, error);
  }
}

/** The error prune stops with when a run (or one of its pages) cannot be read; other errors as they are. */
export function unreadableRun(block: Block, error: unknown): unknown {
  if (error instanceof FormatError || (error instanceof StoreError && error.kind === 'not-found')) {
    return new FormatError('FORMAT_CORRUPT', 'prune', `deleted nothing: ${describeBlock(block)} (${blockKey(block)}) cannot be read (${error.message}), so what it names is unknown (see cdp-s3 verify)`, { cause: error });
  }
  return error;
}

/** The interval a run at `block` should hold under `forgotten` (undefined: it is empty). */
function wantedInterval(block: Block, forgotten: ForgottenSet): { from: number; to: number } | undefined {
  if (forgotten.coversAll(block.first, block.last)) return undefined;
  return { from: forgotten.keptBefore(block.first), to: forgotten.keptAtOrBefore(block.last) };
}

/**
 * Compacts the chain `index` (a full index, read under the writer lock) for its forgotten set.
 * With `dryRun`, counts what it would store and stores nothing.
 */
export async function compact(repo: Repository, index: ChainIndex, options: { signal?: AbortSignal; clock?: () => number; dryRun?: boolean } = {}): Promise<CompactResult> {
  const { signal } = options;
  const forgotten = index.forgotten;
  if (forgotten.equals(index.compacted) || (index.generation === 0 && forgotten.size === 0)) {
    return { generation: index.generation, rewritten: 0, emptied: 0, metadataBytes: 0 };
  }
  const generation = index.highestGeneration + 1;
  const next = index.successor(generation, forgotten);
  const result: CompactResult = { generation, rewritten: 0, emptied: 0, metadataBytes: 0 };
  const read = async (block: Block): Promise<RunReader> => readChainRun(repo, block, signal);
  // The run that holds the points up to `at` and starts no earlier than `floor`: the largest
  // stored span ending at `at` that does (one root for up to fanout^level forgotten points),
  // else the delta of `at`.
  const runEndingAt = async (at: number, floor: number): Promise<RunReader | undefined> => {
    for (let level = index.topLevel; level >= 1; level--) {
      const size = index.fanout ** level;
      if (at % size !== 0 || at - size < floor) continue;
      const span = await index.stored(level, at, signal);
      if (span === undefined) continue;
      const run = await read(span);
      if (run.root.to === at && run.root.from >= floor) return run;
    }
    const delta = await index.stored(0, at, signal);
    return delta === undefined ? undefined : read(delta);
  };

  // Deltas: a kept point after forgotten ones takes in their changes (its run is the merge of the
  // runs from the kept point before it, found by following each run's `from`).
  for (const seq of index.deltaSeqs()) {
    throwIfAborted(signal);
    const block = index.block(0, seq);
    const wanted = wantedInterval(block, forgotten);
    if (wanted === undefined) {
      result.emptied++;
      continue;
    }
    const current = await read(block);
    if (current.root.from === wanted.from) continue;
    const chain: RunReader[] = [current];
    for (let at = current.root.from; at > wanted.from; ) {
      const run = await runEndingAt(at, wanted.from);
      if (run === undefined) {
        throw new FormatError('FORMAT_CORRUPT', `delta ${seq}`, `cannot take in the forgotten points before it: the run of point ${at} is missing (see cdp-s3 verify)`);
      }
      chain.unshift(run);
      at = run.root.from;
      if (at < wanted.from) throw new FormatError('FORMAT_CORRUPT', run.what, `holds points from ${at + 1}, past the kept point ${wanted.from}`);
    }
    const target: Block = { ...block, generation };
    if (options.dryRun !== true) result.metadataBytes += await repo.writeMergedRun(target, chain, { delta: current.root.delta! }, signal);
    next.added(target);
    result.rewritten++;
  }

  // Spans, lowest level first: each one whose interval changes is the merge of its children as
  // this compaction makes them.
  const spans = index.spans().sort((a, b) => a.level - b.level || a.last - b.last);
  for (const block of spans) {
    throwIfAborted(signal);
    const wanted = wantedInterval(block, forgotten);
    if (wanted === undefined) {
      result.emptied++;
      continue;
    }
    const current = await read(block);
    if (current.root.from === wanted.from && current.root.to === wanted.to) continue;
    const target: Block = { level: block.level, first: block.first, last: block.last, generation };
    if (options.dryRun !== true) {
      const children = await next.childrenOf(target, signal);
      const runs: RunReader[] = [];
      for (const child of children) runs.push(await read(child));
      result.metadataBytes += await repo.writeMergedRun(target, runs, {}, signal);
    }
    next.added(target);
    result.rewritten++;
  }

  if (options.dryRun !== true) {
    // The commit: every run of this generation is stored (and synced) before the record naming it.
    const now = (options.clock ?? Date.now)();
    await repo.store.put(
      `${COMPACTION_PREFIX}${generationName(generation)}`,
      encodeCompactionRecord({ volumeId: repo.config.volumeId, generation, created: now, latest: index.latest, ranges: forgotten.list.map(([a, b]): [number, number] => [a, b]) }),
      { signal, ifAbsent: true },
    );
  }
  return result;
}
