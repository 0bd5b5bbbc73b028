// A progress bar on stderr for terminals: phase, bytes done of total, rate, ETA. On a pipe the
// CLI uses silentProgress instead, so scripts see only the result.

import type { Progress } from '../core/progress.js';
import { formatDuration, formatSize } from './units.js';

const REDRAW_MS = 100;

export class ProgressBar implements Progress {
  private name = '';
  private total = 0;
  private done_ = 0;
  private started = 0;
  private drawn = 0;

  constructor(
    private readonly out: NodeJS.WritableStream & { columns?: number } = process.stderr,
    /** Milliseconds; tests drive it by hand. */
    private readonly clock: () => number = Date.now,
  ) {}

  phase(name: string, totalBytes: number): void {
    this.name = name;
    this.total = totalBytes;
    this.done_ = 0;
    this.started = this.clock();
    this.drawn = 0;
  }

  advance(bytes: number): void {
    this.done_ += bytes;
    const now = this.clock();
    if (now - this.drawn >= REDRAW_MS) {
      this.drawn = now;
      this.draw(now);
    }
  }

  done(): void {
    if (this.drawn > 0) this.out.write('\r\x1b[K');
  }

  private draw(now: number): void {
    const seconds = Math.max((now - this.started) / 1000, 0.001);
    const rate = this.done_ / seconds;
    const fraction = this.total > 0 ? Math.min(1, this.done_ / this.total) : 0;
    const width = 24;
    const filled = Math.round(fraction * width);
    const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
    const eta = rate > 0 && this.total > 0 ? formatDuration((this.total - this.done_) / rate) : '--:--';
    const text = `${this.name} ${bar} ${formatSize(this.done_)} / ${formatSize(this.total)}  ${formatSize(rate)}/s  ETA ${eta}`;
    this.out.write(`\r\x1b[K${text.slice(0, (this.out.columns ?? 100) - 1)}`);
  }
}
