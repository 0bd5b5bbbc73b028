// Bounded concurrency with backpressure, the one way cdp-s3 runs many I/O tasks at once
// (uploads, ranged GETs, metadata reads): at most `concurrency` run (p-limit), and add() waits
// while `window` are running or queued, so a producer never runs ahead of memory. The first
// failure is kept; add() and drain() throw it, and tasks not yet started are skipped.

import pLimit, { type LimitFunction } from 'p-limit';

export class TaskWindow {
  private readonly limit: LimitFunction;
  private readonly tasks = new Set<Promise<void>>();
  private failure: { error: unknown } | undefined;

  constructor(
    concurrency: number,
    private readonly window = concurrency,
  ) {
    this.limit = pLimit(Math.max(1, concurrency));
  }

  /** True once a task failed. */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  get size(): number {
    return this.tasks.size;
  }

  /** Starts `task` when there is room (waiting for it), unless a task failed: then throws that failure. */
  async add(task: () => Promise<void>): Promise<void> {
    while (this.tasks.size >= this.window && this.failure === undefined) await Promise.race(this.tasks);
    if (this.failure !== undefined) throw this.failure.error;
    const run = this.limit(async () => {
      if (this.failure === undefined) await task();
    }).catch((error: unknown) => {
      this.failure ??= { error };
    });
    const tracked = run.finally(() => this.tasks.delete(tracked));
    this.tasks.add(tracked);
  }

  /** Waits for every task; throws the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.tasks);
    if (this.failure !== undefined) throw this.failure.error;
  }

  /** Waits for every task, whatever happened (for cleanup paths). */
  async settle(): Promise<void> {
    await Promise.allSettled(this.tasks);
  }
}
