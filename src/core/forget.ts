// forget: removes points in time from the history by a retention policy (restic's --keep-*
// meanings, src/model/retention.ts). It writes one record (`forgets/`) naming the removed points;
// from then on they are not points: log does not list them, restore --at passes over them, verify
// and status do not count them. Nothing is deleted here: the kept points restore exactly as
// before, because their maps are the same runs as before. `prune` then deletes the runs and packs
// no kept point needs. It takes no lock: it only adds a record, and never removes the newest
// point, which is all a live writer builds on.

import { NoPointInTimeError } from '../errors.js';
import { ForgottenSet, type RetentionDecision, type RetentionPolicy, applyRetention, checkRetentionPolicy } from '../model/retention.js';
import { ChainGapError } from '../repo/chain-index.js';
import { FORGET_PREFIX, encodeForgetRecord, timeKey } from '../repo/records.js';
import { Repository } from '../repo/repository.js';
import type { ObjectStore } from '../store/types.js';

export interface ForgetOptions {
  store: ObjectStore;
  policy: RetentionPolicy;
  /** Report what would be removed; write nothing. */
  dryRun?: boolean;
  signal?: AbortSignal;
  /** Wall-clock ms since the epoch for the record's time; tests inject one. */
  clock?: () => number;
}

export interface ForgetResult {
  dryRun: boolean;
  latest: number;
  /** Points there were before (not counting those forgotten earlier). */
  points: number;
  /** Kept points, newest first, with the rules that keep them ('unknown-time': no summary left to judge it by). */
  keep: RetentionDecision['keep'];
  /** Removed now, as ascending inclusive ranges of seqs. */
  removed: Array<[number, number]>;
  removedCount: number;
  /** The record written (undefined on a dry run or when nothing was removed). */
  record: string | undefined;
}

export async function forget(options: ForgetOptions): Promise<ForgetResult> {
  checkRetentionPolicy(options.policy);
  const { store, signal } = options;
  const dryRun = options.dryRun === true;
  const repo = await Repository.open(store, signal);
  const index = await repo.fullIndex(signal);
  const latest = index.latest;
  for (const seq of options.policy.seqs ?? []) {
    if (seq > latest || seq < 1) throw new NoPointInTimeError(`--keep-seq ${seq}: no such point in time (the newest is ${latest})`);
    if (index.forgotten.has(seq)) throw new NoPointInTimeError(`--keep-seq ${seq}: that point was removed by an earlier forget and cannot be kept`);
  }

  // The points still in the history, with their times.
  const judged: Array<{ seq: number; time: number }> = [];
  const unknown: number[] = [];
  for (const seq of index.forgotten.keptSeqs(1, latest)) {
    try {
      judged.push({ seq, time: (await repo.summary(index, seq, signal)).end });
    } catch (error) {
      // Nothing tells its time (its delta and every span over it lost): kept, never judged.
      if (!(error instanceof ChainGapError)) throw error;
      unknown.push(seq);
    }
  }
  const decision = applyRetention(judged, options.policy);
  const keep = [...decision.keep, ...unknown.map((seq) => ({ seq, reasons: ['unknown-time' as const] }))].sort((a, b) => b.seq - a.seq);
  const removed = ForgottenSet.rangesOf(decision.remove);
  let record: string | undefined;
  if (!dryRun && removed.length > 0) {
    const now = (options.clock ?? Date.now)();
    record = timeKey(FORGET_PREFIX, now);
    await store.put(record, encodeForgetRecord({ volumeId: repo.config.volumeId, created: now, latest, ranges: removed }), { ifAbsent: true, signal });
  }
  return { dryRun, latest, points: judged.length + unknown.length, keep, removed, removedCount: decision.remove.length, record };
}
