// The one way a point in time is committed, shared by backup, scan and protect: a DeltaWriter on
// top of the newest point, then finish (packs, pages) → the delta with an end time that only
// moves forward → the writer lock checked → commit (the delta, then the spans due) → the head
// moves to the new point. What callers do after (clearing a dirty region log) is theirs.

import { hostname } from 'node:os';
import type { DeltaKind } from '../model/regions.js';
import type { ChainIndex } from '../repo/chain-index.js';
import type { WriterLock } from '../repo/lock.js';
import type { WriterTrust } from '../repo/trust.js';
import type { PitView } from '../repo/pit-view.js';
import type { CommitResult, Repository } from '../repo/repository.js';
import { DeltaWriter, type PatchHistory } from './delta-writer.js';

/** Runs a head may fold before it is reopened from the chain's cover. */
const REOPEN_AFTER_RUNS = 64;
/**
 * A long-running writer opens its head afresh (from the newest point's cover) at least this
 * often, so it never reads a run that only an older point needed: prune may delete such runs once
 * a forget removed that point, and a grace shorter than this needs no other writer (prune.ts).
 */
export const HEAD_MAX_AGE_MS = 3_600_000;

export interface DeltaCommitterOptions {
  repo: Repository;
  index: ChainIndex;
  /** The newest point in time (viewForWriting): the first delta follows it. */
  head: PitView;
  /** Checked right before each commit: a writer that lost its lock commits nothing. */
  lock?: WriterLock;
  /** What the marks say about stored bytes (readWriterTrust), unless begin() is given a fresher reading. */
  trust: WriterTrust;
  /** Where the primary is read (recorded in each delta). */
  sourcePath?: string;
  clock?: () => number;
  packsInFlight?: number;
  signal?: AbortSignal;
  /** The patch chains made through this committer, kept across its deltas (protect's). */
  history?: PatchHistory;
}

export interface Committed {
  seq: number;
  kind: DeltaKind;
  start: number;
  end: number;
  /** Regions the delta changed. */
  regions: number;
  bytesStored: number;
  /** Regions stored as a patch on their previous version. */
  regionsPatched: number;
  packs: number;
  commit: CommitResult;
}

export class DeltaCommitter {
  private headView: PitView;
  private chainIndex: ChainIndex;
  private readonly clock: () => number;
  private headOpenedAt: number;

  constructor(private readonly options: DeltaCommitterOptions) {
    this.headView = options.head;
    this.chainIndex = options.index;
    this.clock = options.clock ?? Date.now;
    this.headOpenedAt = this.clock();
  }

  /** Opens the head afresh if it was opened more than HEAD_MAX_AGE_MS ago (a long-running writer calls it before each delta). */
  async refreshHead(signal?: AbortSignal): Promise<void> {
    if (Math.abs(this.clock() - this.headOpenedAt) < HEAD_MAX_AGE_MS) return;
    await this.reopenHead(this.headView.seq, signal);
  }

  private async reopenHead(seq: number, signal?: AbortSignal): Promise<void> {
    // Also lists the chain afresh, so what a long-running writer keeps of the listing stays
    // O(levels), not one entry per point of its history.
    this.chainIndex = await this.options.repo.index(signal);
    this.headView = await this.options.repo.view(this.chainIndex, seq, { signal });
    this.headOpenedAt = this.clock();
  }

  /** The newest point in time committed through this committer (or the one it started on). */
  get head(): PitView {
    return this.headView;
  }

  get repo(): Repository {
    return this.options.repo;
  }

  get index(): ChainIndex {
    return this.chainIndex;
  }

  /** The same commit path on top of another index and head (the chain as it is in the store now). */
  rebase(index: ChainIndex, head: PitView): DeltaCommitter {
    return new DeltaCommitter({ ...this.options, index, head });
  }


  /** A writer for the next delta, on top of the head (`trust`: a reading taken for this delta). */
  begin(options: { signal?: AbortSignal; trust?: WriterTrust } = {}): DeltaWriter {
    return new DeltaWriter(this.options.repo, this.headView, this.headView.seq + 1, {
      signal: options.signal ?? this.options.signal,
      packsInFlight: this.options.packsInFlight,
      trust: options.trust ?? this.options.trust,
      history: this.options.history,
    });
  }

  /**
   * Commits what `writer` holds as the next point in time. Its end is `end` (default: now), but
   * never at or before the head's, and never before `start`.
   */
  async commit(writer: DeltaWriter, kind: DeltaKind, start: number, options: { end?: number; signal?: AbortSignal } = {}): Promise<Committed> {
    const signal = options.signal ?? this.options.signal;
    await writer.finish();
    const head = this.headView;
    if (writer.seq !== head.seq + 1) throw new Error(`delta ${writer.seq} does not follow the head ${head.seq}`);
    const end = Math.max(options.end ?? this.clock(), head.time + 1, start);
    const source = this.options.sourcePath === undefined ? undefined : { host: hostname(), path: this.options.sourcePath };
    this.options.lock?.check(); // LOCKED if the lock was lost (removed by --force-unlock elsewhere, or expired): commit nothing
    const commit = await this.options.repo.commitDelta(writer.delta({ kind, start: Math.min(start, end), end, source }), this.chainIndex, signal);
    // Extending keeps the folded pages at hand; once spans have replaced many of the runs folded
    // so far, the head is opened afresh from its (short) cover.
    if (head.runs.length < REOPEN_AFTER_RUNS && Math.abs(this.clock() - this.headOpenedAt) < HEAD_MAX_AGE_MS) {
      this.headView = await head.extend(commit.run, writer.seq, end, signal);
    } else await this.reopenHead(writer.seq, signal);
    return { seq: writer.seq, kind, start, end, regions: writer.changed.count(), bytesStored: writer.bytesStored, regionsPatched: writer.regionsPatched, packs: writer.packCount, commit };
  }
}
