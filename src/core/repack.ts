// Repack: copies the pieces still used out of packs that are mostly unused, so prune can delete
// those packs (docs/FORMAT.md, "Repack"). A pack is written once and never changed, and a run
// names the offsets of its pieces, so repacking writes new packs and a new generation of every
// run that names a moved piece, committed like a compaction (`compactions/<g>`, the same
// forgotten set). Packs are chosen by their unused share, most first, until what stays unused is
// at most `maxUnused` of what the chain uses; 0 repacks every partly used pack.
//
// The caller holds the writer lock (as for compaction). Packs that hold bytes a verify found bad
// are never copied (their marks name them where they are); nothing is repacked while a marks
// object cannot be read (what it names is unknown).

import { randomBytes } from 'node:crypto';
import { throwIfAborted } from '../errors.js';
import { relocatePage, runEntries } from '../model/pages.js';
import { regionLength } from '../model/regions.js';
import type { Block, ChainIndex } from '../repo/chain-index.js';
import { COMPACTION_PREFIX, PACK_PREFIX, generationName, isPackKey, packKey } from '../repo/keys.js';
import { PACK_HEADER_BYTES, PackBuilder } from '../repo/pack.js';
import { encodeCompactionRecord } from '../repo/records.js';
import type { Repository } from '../repo/repository.js';
import type { RunReader } from '../repo/run-reader.js';
import { readTrust } from '../repo/trust.js';
import { readChainRun, unreadableRun } from './compact.js';

/** Repacked pieces go to packs named after point 0: no delta stored them (verify reads them where first named). */
export const REPACK_SEQ = 0;

export interface RepackResult {
  /** The generation committed (undefined: nothing repacked). */
  generation: number | undefined;
  /** Bytes the chain's runs use in packs, and bytes the packs hold (region data, headers left out), before. */
  usedBytes: number;
  storedBytes: number;
  /** Packs copied out and left for prune, and the bytes that frees. */
  packsRepacked: number;
  bytesFreed: number;
  /** Bytes copied into new packs, and how many. */
  bytesCopied: number;
  packsWritten: number;
  /** Runs written anew because they name a moved piece. */
  runsRewritten: number;
  /** Why nothing was repacked although packs are partly unused. */
  skipped?: string;
}

interface PackUse {
  /** offset → length of every piece the chain names in the pack. */
  pieces: Map<number, number>;
  /** Runs that name it. */
  runs: Set<string>;
  size: number;
}

export async function repack(
  repo: Repository,
  index: ChainIndex,
  options: { maxUnused: number; repackSmall?: boolean; signal?: AbortSignal; clock?: () => number; dryRun?: boolean },
): Promise<RepackResult> {
  const { signal } = options;
  const g = repo.geometry;
  // What the chain uses: every piece of every run of the chain, per pack.
  const uses = new Map<string, PackUse>();
  const runs = new Map<string, Block>();
  const blocks: Block[] = [...index.deltaSeqs().map((seq) => index.block(0, seq)), ...index.spans()];
  for (const block of blocks) {
    throwIfAborted(signal);
    const run = await readChainRun(repo, block, signal);
    const id = `${block.level}/${block.last}`;
    runs.set(id, block);
    for (const ref of run.pages) {
      const page = (await run.page(ref.page, signal).catch((error: unknown) => {
        throw unreadableRun(block, error);
      }))!;
      for (const { region, stored } of runEntries(page)) {
        if (stored === undefined) continue;
        const note = (pack: string, offset: number, length: number): void => {
          let use = uses.get(pack);
          if (use === undefined) uses.set(pack, (use = { pieces: new Map(), runs: new Set(), size: 0 }));
          use.pieces.set(offset, length);
          use.runs.add(id);
        };
        if (stored.base !== undefined) note(stored.base.pack, stored.base.offset, stored.base.length);
        for (const patch of stored.patches) note(patch.pack, patch.offset, patch.length);
      }
    }
  }
  for await (const info of repo.store.list(PACK_PREFIX, { signal })) {
    const use = uses.get(info.key);
    if (use !== undefined) use.size = info.size;
  }
  let usedBytes = 0;
  let storedBytes = 0;
  const candidates: Array<{ pack: string; used: number; unused: number }> = [];
  // --repack-small: fully used packs under a quarter of the pack size are merged as well (each
  // point's pack is small under protect; merged, the object count follows the bytes kept).
  const small = repo.config.packSize / 4;
  const smallPacks: typeof candidates = [];
  for (const [pack, use] of uses) {
    const used = [...use.pieces.values()].reduce((a, b) => a + b, 0);
    const data = Math.max(0, use.size - PACK_HEADER_BYTES);
    usedBytes += used;
    storedBytes += data;
    if (data > used && isPackKey(pack)) candidates.push({ pack, used, unused: data - used });
    else if (options.repackSmall === true && data < small && isPackKey(pack)) smallPacks.push({ pack, used, unused: 0 });
  }
  const result: RepackResult = { generation: undefined, usedBytes, storedBytes, packsRepacked: 0, bytesFreed: 0, bytesCopied: 0, packsWritten: 0, runsRewritten: 0 };
  const allowed = options.maxUnused * usedBytes;
  const merging = smallPacks.length > 1 ? smallPacks : [];
  if (storedBytes - usedBytes <= allowed && !(options.maxUnused === 0 && candidates.length > 0) && merging.length === 0) return result;

  const trust = await readTrust(repo.store, signal);
  if (trust.unreadable.length > 0) {
    result.skipped = `marks object ${trust.unreadable[0]!.key} cannot be read, so which stored bytes are bad is unknown`;
    return result;
  }
  const damagedPacks = new Set(trust.damagedLocations.map((d) => d.pack));
  // Most unused share first: the most space freed per byte copied.
  candidates.sort((a, b) => b.unused / (b.unused + b.used) - a.unused / (a.unused + a.used) || b.unused - a.unused);
  const chosen: typeof candidates = [];
  let unused = storedBytes - usedBytes;
  for (const candidate of candidates) {
    if (unused <= allowed && options.maxUnused > 0) break;
    if (damagedPacks.has(candidate.pack)) continue;
    chosen.push(candidate);
    unused -= candidate.unused;
  }
  for (const candidate of merging) if (!damagedPacks.has(candidate.pack)) chosen.push(candidate);
  if (chosen.length === 0) return result;
  result.packsRepacked = chosen.length;
  result.bytesFreed = chosen.reduce((n, c) => n + c.unused, 0);
  result.bytesCopied = chosen.reduce((n, c) => n + c.used, 0);
  const generation = index.highestGeneration + 1;
  const rewrite = new Set<string>();
  for (const c of chosen) for (const id of uses.get(c.pack)!.runs) rewrite.add(id);
  result.runsRewritten = rewrite.size;
  if (options.dryRun === true) {
    result.generation = generation;
    return result;
  }

  // Copy: the used pieces of each chosen pack, in offset order, into new packs.
  const moved = new Map<string, Map<number, { pack: string; offset: number }>>();
  const capacity = repo.config.packSize;
  let builder: PackBuilder | undefined;
  const seal = async (): Promise<void> => {
    if (builder === undefined || builder.dataBytes === 0) return;
    await repo.putPack(builder.key, builder.bytes(), signal);
    result.packsWritten++;
    builder = undefined;
  };
  for (const c of chosen) {
    throwIfAborted(signal);
    const pieces = [...uses.get(c.pack)!.pieces].sort((a, b) => a[0] - b[0]);
    const to = new Map<number, { pack: string; offset: number }>();
    // One ranged GET over the used span of the pack (its unused holes come along).
    const from = pieces[0]![0];
    const end = Math.max(...pieces.map(([offset, length]) => offset + length));
    const bytes = await repo.readPackRange(c.pack, from, end - from, signal);
    for (const [offset, length] of pieces) {
      if (builder !== undefined && !builder.hasRoomFor(length)) await seal();
      builder ??= new PackBuilder(packKey(REPACK_SEQ, randomBytes(4).toString('hex')), Math.max(capacity, length));
      to.set(offset, { pack: builder.key, offset: builder.append(bytes.subarray(offset - from, offset - from + length)) });
    }
    moved.set(c.pack, to);
  }
  await seal();
  await repo.store.sync(signal === undefined ? {} : { signal });

  // Every run that names a moved piece, anew (lowest level first, so nothing reads a half-made generation).
  const moveTo = (pack: string, offset: number): { pack: string; offset: number } | undefined => {
    return moved.get(pack)?.get(offset);
  };
  const targets = [...rewrite].map((id) => runs.get(id)!).sort((a, b) => a.level - b.level || a.last - b.last);
  for (const block of targets) {
    throwIfAborted(signal);
    const run: RunReader = await repo.readRun(block, signal);
    const target: Block = { level: block.level, first: block.first, last: block.last, generation };
    const summaries = block.level > 0 ? await run.summaries(signal) : undefined;
    await repo.writeMergedRun(target, [run], { ...(run.root.delta === undefined ? {} : { delta: run.root.delta }), ...(summaries === undefined ? {} : { summaries }), relocate: (page) => relocatePage(page, moveTo) }, signal);
    index.added(target);
  }
  const now = (options.clock ?? Date.now)();
  await repo.store.put(
    `${COMPACTION_PREFIX}${generationName(generation)}`,
    encodeCompactionRecord({ volumeId: repo.config.volumeId, generation, created: now, latest: index.latest, ranges: index.compacted.list.map(([a, b]): [number, number] => [a, b]) }),
    { signal, ifAbsent: true },
  );
  result.generation = generation;
  return result;
}
