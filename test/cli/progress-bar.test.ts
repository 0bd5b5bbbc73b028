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
  it('draws bytes done, rate and ETA on a terminal, and clears the line when done', async () => {
    const screen = new Screen(true);
    const bar = new ProgressBar(screen);
    bar.phase('backup', 100 * 1024 * 1024);
    await new Promise((r) => setTimeout(r, 120));
    bar.advance(25 * 1024 * 1024);
    expect(screen.text).toMatch(/backup \[#{6}\.{18}\] 25\.0 MiB \/ 100 MiB {2}[\d.]+ \w+\/s {2}ETA \d\d:\d\d/);
    bar.done();
    expect(screen.text.endsWith('\r\x1b[K')).toBe(true);
  });

  it('is silent on a pipe and with --json', () => {
    const pipe = new Screen(false);
    expect(new CliContext({}, new Screen(false), pipe).progress()).toBe(silentProgress);
    expect(new CliContext({ json: true }, new Screen(false), new Screen(true)).progress()).toBe(silentProgress);
    expect(new CliContext({ progress: false }, new Screen(false), new Screen(true)).progress()).toBe(silentProgress);
    expect(new CliContext({}, new Screen(false), new Screen(true)).progress()).toBeInstanceOf(ProgressBar);
  });
});
