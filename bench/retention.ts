// bench retention: a long history thinned by forget + prune (issue 12's counts).
//
// A chain of --points points in time (default 20,000, one every 5 s as protect makes them: about
// 28 hours) is written through the real commit path (Repository.commitDelta, which writes the
// spans), each point storing --changes regions in a pack of its own (real objects, so the bytes
// can be counted; their contents are not read). Then `forget --keep-within 1h --keep-hourly 24
// --keep-daily 7` and `prune --grace 0s` (which compacts first), through a store that counts every request. Reported:
// requests and seconds of each, objects and pack bytes before and after, and the pack bytes the
// kept points reference (the union of the pieces their maps name).

import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { backup } from '../src/core/backup.js';
import { forget } from '../src/core/forget.js';
import { init } from '../src/core/init.js';
import { executeRestore, planRestore, planTotals } from '../src/core/restore.js';
import { parsePointSelector } from '../src/core/points.js';
import { prune } from '../src/core/prune.js';
import { seededRandom } from '../src/demo/sample-image.js';
import { wholeAt } from '../src/model/regions.js';
import { newConfig } from '../src/repo/config.js';
import { packKey } from '../src/repo/keys.js';
import { Repository } from '../src/repo/repository.js';
import { RunBuilder } from '../src/repo/run-builder.js';
import { openStore } from '../src/store/open.js';
import type { ObjectStore } from '../src/store/types.js';
import { RequestCountingStore, requests } from './counting-store.js';
import { median, option, table } from './harness.js';

function formatBytes(bytes: number): string {
  return bytes >= 2 ** 30 ? `${(bytes / 2 ** 30).toFixed(2)} GiB` : bytes >= 2 ** 20 ? `${(bytes / 2 ** 20).toFixed(1)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`;
}

export interface RetentionRow {
  measure: string;
  value: string;
  note: string;
}

const REGION = 64 * 1024;
const PACK_HEADER = 16;

async function objectsUnder(store: ObjectStore, prefix = ''): Promise<{ count: number; bytes: number }> {
  let count = 0;
  let bytes = 0;
  for await (const info of store.list(prefix)) {
    count++;
    bytes += info.size;
  }
  return { count, bytes };
}

export async function runRetentionBench(argv: string[], log: (line: string) => void): Promise<RetentionRow[]> {
  if (argv.includes('--restores-only')) {
    const dir = await mkdtemp(join(option(argv, '--dir', '/tmp'), 'cdp-retention-'));
    try {
      return await restoreTimes(dir, argv, log);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }
  const points = Number(option(argv, '--points', '20000'));
  const changes = Number(option(argv, '--changes', '2'));
  const intervalMs = Number(option(argv, '--interval-ms', '5000'));
  const volumeRegions = Number(option(argv, '--regions', '16384'));
  const base = option(argv, '--dir', '/tmp');
  await mkdir(base, { recursive: true });
  const dir = await mkdtemp(join(base, 'cdp-retention-'));
  const rows: RetentionRow[] = [];
  try {
    const repoDir = join(dir, 'repo');
    const store = openStore(repoDir);
    const repo = await Repository.init(store, newConfig({ volumeSize: volumeRegions * REGION, regionSize: REGION }));
    const rand = seededRandom(12);
    const index = await repo.index();
    const t0 = Date.UTC(2026, 11, 1);
    const packBody = Buffer.alloc(PACK_HEADER + changes * REGION);
    const started = Date.now();
    log(`retention: writing ${points} points (${changes} regions of ${formatBytes(REGION)} each, one every ${intervalMs / 1000} s)…`);
    for (let seq = 1; seq <= points; seq++) {
      const regions = new Set<number>();
      while (regions.size < Math.min(changes, volumeRegions)) regions.add(Math.floor(rand() * volumeRegions));
      const pack = packKey(seq, randomBytes(4).toString('hex'));
      await store.put(pack, packBody, { deferSync: true });
      const builder = new RunBuilder(store, seq, repo.context, { inlineEntries: repo.inlineEntries });
      const digests = randomBytes(32 * regions.size);
      let i = 0;
      for (const region of [...regions].sort((a, b) => a - b)) {
        await builder.set(region, wholeAt({ pack, offset: PACK_HEADER + i * (REGION + 1), length: REGION + 1 }), digests.subarray(32 * i, 32 * i + 32));
        i++;
      }
      const end = t0 + seq * intervalMs;
      await repo.commitDelta({ seq, info: { kind: seq === 1 ? 'base' : 'host', start: end - intervalMs, end, storedBytes: regions.size * REGION, source: undefined }, pages: await builder.finish() }, index);
      if (seq % 5000 === 0) log(`  ${seq} points, ${((Date.now() - started) / 1000).toFixed(0)} s`);
    }
    await store.sync();
    const before = await objectsUnder(store);
    const packsBefore = await objectsUnder(store, 'packs/');

    // Restore's cost for the oldest point the policy keeps by the day, before and after.
    const foldCost = async (at: string): Promise<number> => {
      const counting = new RequestCountingStore(openStore(repoDir));
      await planTotals(await planRestore({ store: counting, at: parsePointSelector(at) }));
      return requests(counting.total());
    };

    const policy = { withinMs: 3_600_000, calendar: { hourly: 24, daily: 7 } };
    const forgetStore = new RequestCountingStore(openStore(repoDir));
    let t = process.hrtime.bigint();
    const forgot = await forget({ store: forgetStore, policy });
    const forgetSeconds = Number(process.hrtime.bigint() - t) / 1e9;
    const oldestKept = Math.min(...forgot.keep.map((k) => k.seq));
    const foldBefore = await foldCost(String(oldestKept));
    rows.push({
      measure: 'forget --keep-within 1h --keep-hourly 24 --keep-daily 7: requests, seconds',
      value: `${requests(forgetStore.total())}, ${forgetSeconds.toFixed(2)} s`,
      note: `${points} points: kept ${forgot.keep.length}, removed ${forgot.removedCount} (${forgot.removed.length} ranges)`,
    });

    const pruneStore = new RequestCountingStore(openStore(repoDir));
    t = process.hrtime.bigint();
    const pruned = await prune({ store: pruneStore, graceMs: 0 });
    const pruneSeconds = Number(process.hrtime.bigint() - t) / 1e9;
    const after = await objectsUnder(store);
    const packsAfter = await objectsUnder(store, 'packs/');
    const c = pruneStore.total();
    rows.push({
      measure: 'prune --grace 0s: requests, seconds',
      value: `${requests(c)}, ${pruneSeconds.toFixed(2)} s`,
      note: `${c.gets} GET, ${c.listPages} LIST, ${c.puts} PUT, ${c.deletes} DeleteObjects; compaction ${pruned.compaction?.generation ?? 'skipped'}: ${pruned.compaction?.rewritten ?? 0} runs rewritten, ${pruned.compaction?.emptied ?? 0} emptied; read ${pruned.runsRead} runs of the chain, deleted ${pruned.deleted.length} objects (${pruned.runsUnneeded} runs) of ${formatBytes(pruned.bytesDeleted)}`,
    });
    rows.push({
      measure: 'objects before → after',
      value: `${before.count} → ${after.count}`,
      note: `${(after.count / forgot.keep.length).toFixed(1)} objects per kept point; ${formatBytes(before.bytes)} → ${formatBytes(after.bytes)}`,
    });

    // The pack bytes the kept points reference: the union of the pieces their maps name.
    const reader = await Repository.open(openStore(repoDir));
    const readerIndex = await reader.fullIndex();
    const pieces = new Set<string>();
    for (const { seq } of forgot.keep) {
      const view = await reader.view(readerIndex, seq);
      for await (const folded of view.pages()) {
        for (let region = folded.first; region < folded.first + folded.count; region++) {
          const stored = folded.stored(region);
          if (stored?.base !== undefined) pieces.add(`${stored.base.pack}@${stored.base.offset}`);
        }
      }
    }
    const referencedBytes = pieces.size * REGION;
    const storedBytes = packsAfter.bytes - packsAfter.count * PACK_HEADER;
    rows.push({
      measure: 'region bytes in packs after prune / bytes the kept points reference',
      value: (storedBytes / referencedBytes).toFixed(2),
      note: `${formatBytes(storedBytes)} stored (was ${formatBytes(packsBefore.bytes - packsBefore.count * PACK_HEADER)}), ${formatBytes(referencedBytes)} referenced by the ${forgot.keep.length} kept points`,
    });
    rows.push({
      measure: 'repack after the compaction (--max-unused 5%): packs, bytes copied',
      value: `${pruned.repack?.packsRepacked ?? 0}, ${formatBytes(pruned.repack?.bytesCopied ?? 0)}`,
      note: `before it the packs held ${formatBytes(pruned.repack?.storedBytes ?? 0)} for ${formatBytes(pruned.repack?.usedBytes ?? 0)} the chain uses; ${pruned.repack?.runsRewritten ?? 0} runs rewritten, ${pruned.repack?.packsWritten ?? 0} packs written`,
    });
    // --repack-small: the one-pack-per-point packs merged, so objects follow the bytes kept.
    const smallStore = new RequestCountingStore(openStore(repoDir));
    t = process.hrtime.bigint();
    const merged = await prune({ store: smallStore, graceMs: 0, repackSmall: true });
    const smallSeconds = Number(process.hrtime.bigint() - t) / 1e9;
    const afterSmall = await objectsUnder(store);
    rows.push({
      measure: 'prune --grace 0s --repack-small: requests, seconds; objects after',
      value: `${requests(smallStore.total())}, ${smallSeconds.toFixed(2)} s; ${afterSmall.count}`,
      note: `${merged.repack?.packsRepacked ?? 0} packs merged into ${merged.repack?.packsWritten ?? 0} (${formatBytes(merged.repack?.bytesCopied ?? 0)} copied), ${merged.repack?.runsRewritten ?? 0} runs rewritten; ${(afterSmall.count / forgot.keep.length).toFixed(2)} objects per kept point`,
    });
    const foldAfter = await foldCost(String(oldestKept));
    rows.push({
      measure: `restore --dry-run of point ${oldestKept} (the oldest kept): requests before → after`,
      value: `${foldBefore} → ${foldAfter}`,
      note: 'the same cover before and after; its runs compacted',
    });
    rows.push(...(await restoreTimes(dir, argv, log)));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  return rows;
}

/**
 * Restore time of kept points with real data, before and after forget + prune (compaction and
 * repack): a --real-mib volume backed up --real-points times, each point rewriting a few 64 KiB
 * regions, thinned to the newest 5 points and every 20th; medians of 3 restores to a file.
 */
async function restoreTimes(dir: string, argv: string[], log: (line: string) => void): Promise<RetentionRow[]> {
  const mib = Number(option(argv, '--real-mib', '256'));
  const count = Number(option(argv, '--real-points', '200'));
  const repoDir = join(dir, 'real-repo');
  const source = join(dir, 'real.img');
  const target = join(dir, 'restored.img');
  const image = Buffer.alloc(mib * 2 ** 20);
  const rand = seededRandom(5);
  for (let i = 0; i < image.length; i += 4096) image.writeUInt32LE(Math.floor(rand() * 2 ** 32), i);
  await writeFile(source, image);
  await init({ store: openStore(repoDir), from: source, regionSize: REGION });
  log(`retention: ${count} backups of a ${mib} MiB image…`);
  for (let seq = 1; seq <= count; seq++) {
    if (seq > 1) {
      for (let k = 0; k < 8; k++) {
        const at = Math.floor(rand() * (image.length / REGION)) * REGION;
        image.fill(seq & 0xff, at, at + REGION / 2);
      }
      await writeFile(source, image);
    }
    await backup({ store: openStore(repoDir), source });
  }
  const points = [1, Math.floor(count / 2), count - 10];
  const time = async (seq: number): Promise<number> => {
    const runs: number[] = [];
    for (let i = 0; i < 3; i++) {
      const t = process.hrtime.bigint();
      await executeRestore(await planRestore({ store: openStore(repoDir), at: parsePointSelector(String(seq)) }), { to: target });
      runs.push(Number(process.hrtime.bigint() - t) / 1e9);
      await rm(target, { force: true });
    }
    return median(runs);
  };
  const before = new Map<number, number>();
  for (const seq of points) before.set(seq, await time(seq));
  const seqs: number[] = [];
  for (let seq = 20; seq <= count; seq += 20) seqs.push(seq);
  await forget({ store: openStore(repoDir), policy: { last: 5, seqs: [...new Set([...seqs, ...points])] } });
  const pruned = await prune({ store: openStore(repoDir), graceMs: 0, maxUnused: 0 });
  const after = new Map<number, number>();
  for (const seq of points) after.set(seq, await time(seq));
  const merged = await prune({ store: openStore(repoDir), graceMs: 0, maxUnused: 0, repackSmall: true });
  const rows: RetentionRow[] = [];
  for (const seq of points) {
    const small = await time(seq);
    const b = before.get(seq)!;
    const a = after.get(seq)!;
    rows.push({
      measure: `restore of kept point ${seq} (${mib} MiB, real data): seconds before → after prune → after --repack-small, median of 3`,
      value: `${b.toFixed(2)} → ${a.toFixed(2)} (${(b / a).toFixed(2)}x) → ${small.toFixed(2)} (${(b / small).toFixed(2)}x)`,
      note: `prune --max-unused 0: compaction ${pruned.compaction?.rewritten ?? 0} runs rewritten, repack ${pruned.repack?.packsRepacked ?? 0} packs (${formatBytes(pruned.repack?.bytesCopied ?? 0)}); --repack-small merged ${merged.repack?.packsRepacked ?? 0} into ${merged.repack?.packsWritten ?? 0}`,
    });
  }
  return rows;
}

export function renderRetentionBench(rows: RetentionRow[]): string {
  return table(
    ['measure', 'value', 'note'],
    rows.map((r) => [r.measure, r.value, r.note]),
  );
}
