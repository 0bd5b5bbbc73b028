// A wall clock and timer (src/util/timer.ts) that move only when a test advances them: timed
// behaviour (lock refreshes and expiry, intervals, the store's per-attempt timeouts) is driven
// step by step instead of by waiting.

import type { Timer } from '../../src/util/timer.js';

interface Pending {
  due: number;
  order: number;
  callback: () => unknown;
}

export class ManualClock implements Timer {
  private pending: Pending[] = [];
  private scheduled = 0;
  /** The delay of every callback ever scheduled, in order (what budgets a caller chose). */
  readonly delays: number[] = [];

  /** Milliseconds since the epoch; starts at the real time so stored timestamps look ordinary. */
  constructor(public time: number = Date.now()) {}

  readonly now = (): number => this.time;

  /** Calls `callback` once when the clock has advanced `ms`; returns a function that cancels it. */
  schedule(callback: () => unknown, ms: number): () => void {
    const entry: Pending = { due: this.time + ms, order: this.scheduled++, callback };
    this.delays.push(ms);
    this.pending.push(entry);
    return () => {
      this.pending = this.pending.filter((p) => p !== entry);
    };
  }

  /** Callbacks waiting to run. */
  get waiting(): number {
    return this.pending.length;
  }

  /** Milliseconds until the next callback falls due; throws if none is waiting. */
  untilNext(): number {
    if (this.pending.length === 0) throw new Error('no callback is scheduled');
    return Math.min(...this.pending.map((p) => p.due)) - this.time;
  }

  /**
   * Moves the clock forward by `ms`, running every callback that falls due on the way (also those
   * scheduled meanwhile) in order of due time, each at its due time, and awaiting what each returns.
   */
  async advance(ms: number): Promise<void> {
    const target = this.time + ms;
    for (;;) {
      const next = this.pending.filter((p) => p.due <= target).sort((a, b) => a.due - b.due || a.order - b.order)[0];
      if (next === undefined) break;
      this.pending = this.pending.filter((p) => p !== next);
      this.time = Math.max(this.time, next.due);
      await next.callback();
    }
    this.time = target;
  }
}
