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
    const eta = `ETA ${rate > 0 && this.total > 0 ? formatDuration((this.total - this.done_) / rate) : '--:--'}`;
    const sizes = `${formatSize(this.done_)} / ${formatSize(this.total)}`;
    const tail = `${sizes}  ${formatSize(rate)}/s  ${eta}`;
    // Whole fields only (a cut "ETA 00:0" misleads): the bar shrinks to fit, then goes, then the
    // rate, the phase name and the sizes.
    const room = (this.out.columns ?? 100) - 1;
    const barWidth = Math.min(24, room - this.name.length - tail.length - 4);
    let text: string;
    if (barWidth >= 8) {
      const filled = Math.round(fraction * barWidth);
      text = `${this.name} [${'#'.repeat(filled)}${'.'.repeat(barWidth - filled)}] ${tail}`;
    } else {
      const shorter = [`${this.name} ${tail}`, `${this.name} ${sizes}  ${eta}`, `${sizes}  ${eta}`, eta];
      text = shorter.find((t) => t.length <= room) ?? '';
    }
    this.out.write(`\r\x1b[K${text}`);
  }
}
