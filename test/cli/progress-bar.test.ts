import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { CliContext } from '../../src/cli/context.js';
import { ProgressBar } from '../../src/cli/progress-bar.js';
import { silentProgress } from '../../src/core/progress.js';

class Screen extends Writable {
  text = '';
  columns = 120;
  constructor(readonly isTTY: boolean) {
    super();
  }
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: () => void): void {
    this.text += chunk.toString();
    callback();
  }
}

describe('progress on stderr', () => {
  it('draws bytes done, rate and ETA on a terminal at most every 100 ms, and clears the line when done', () => {
    const screen = new Screen(true);
    let now = 1_000_000;
    const bar = new ProgressBar(screen, () => now);
    bar.phase('backup', 100 * 1024 * 1024);
    now += 2_000;
    bar.advance(25 * 1024 * 1024); // 25 MiB in 2 s: 12.5 MiB/s, 75 MiB to go in 6 s
    expect(screen.text).toBe('\r\x1b[Kbackup [######..................] 25.0 MiB / 100 MiB  12.5 MiB/s  ETA 00:06');
    now += 99;
    bar.advance(25 * 1024 * 1024);
    expect(screen.text).not.toMatch(/50\.0 MiB/); // too soon to draw again
    now += 1;
    bar.advance(0);
    expect(screen.text).toMatch(/\r\x1b\[Kbackup \[#{12}\.{12}\] 50\.0 MiB \/ 100 MiB {2}23\.8 MiB\/s {2}ETA 00:02$/);
    bar.done();
    expect(screen.text.endsWith('\r\x1b[K')).toBe(true);
  });

  it('fits the terminal with whole fields: the bar shrinks, then fields go; the ETA is never cut', () => {
    const MiB = 1024 * 1024;
    // A slow start on a big volume: a long ETA and long sizes.
    const lineAt = (columns: number): string => {
      const screen = new Screen(true);
      screen.columns = columns;
      let now = 1_000_000;
      const bar = new ProgressBar(screen, () => now);
      bar.phase('compare', 999 * 1024 * 1024 * MiB);
      now += 1_000_000;
      bar.advance(MiB);
      const lines = screen.text.split('\r\x1b[K').filter((l) => l !== '');
      expect(lines).toHaveLength(1);
      return lines[0]!;
    };
    const full = lineAt(200);
    expect(full).toMatch(/^compare \[\.{24}\] 1\.0 MiB \/ 999 TiB {2}1\.0 KiB\/s {2}ETA \d+:\d\d:\d\d$/);
    const eta = / {2}ETA \d+:\d\d:\d\d$/.exec(full)![0].trim();
    for (const columns of [100, 80, 60, 45, 30, 20]) {
      const line = lineAt(columns);
      expect(line.length, `${columns} columns: ${line}`).toBeLessThan(columns);
      expect(line.endsWith(eta), `${columns} columns: ${line}`).toBe(true);
    }
    expect(lineAt(80)).toMatch(/^compare \[\.{8,}\] 1\.0 MiB \/ 999 TiB {2}1\.0 KiB\/s {2}ETA /);
    expect(lineAt(60)).toBe(`compare 1.0 MiB / 999 TiB  1.0 KiB/s  ${eta}`);
    expect(lineAt(20)).toBe(eta);
  });

  it('is silent on a pipe and with --json', () => {
    const pipe = new Screen(false);
    expect(new CliContext({}, new Screen(false), pipe).progress()).toBe(silentProgress);
    expect(new CliContext({ json: true }, new Screen(false), new Screen(true)).progress()).toBe(silentProgress);
    expect(new CliContext({ progress: false }, new Screen(false), new Screen(true)).progress()).toBe(silentProgress);
    expect(new CliContext({}, new Screen(false), new Screen(true)).progress()).toBeInstanceOf(ProgressBar);
  });
});
