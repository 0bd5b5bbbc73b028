// Timing helpers shared by the benchmarks: each measurement is the median of several samples,
// each sample long enough (by repeating the operation) that timer noise does not matter.

export interface Timing {
  /** Median seconds for one run of the operation. */
  seconds: number;
  samples: number;
}

export interface MeasureOptions {
  samples?: number;
  /** Minimum wall time of one sample. */
  minSampleSeconds?: number;
}

function now(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Median time of one call to `op`, calibrated so each sample runs at least minSampleSeconds. */
export function measure(op: () => void, options: MeasureOptions = {}): Timing {
  const samples = options.samples ?? 7;
  const minSample = options.minSampleSeconds ?? 0.05;
  op(); // warm up (JIT, page faults)
  let reps = 1;
  for (;;) {
    const start = now();
    for (let i = 0; i < reps; i++) op();
    if (now() - start >= minSample) break;
    reps *= 2;
  }
  const times: number[] = [];
  for (let s = 0; s < samples; s++) {
    const start = now();
    for (let i = 0; i < reps; i++) op();
    times.push((now() - start) / reps);
  }
  return { seconds: median(times), samples };
}

export function gbps(bytes: number, seconds: number): number {
  return bytes / seconds / 1e9;
}

export function formatBytes(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${bytes / 1024 ** 3} GiB`;
  if (bytes >= 1024 ** 2) return `${bytes / 1024 ** 2} MiB`;
  if (bytes >= 1024) return `${bytes / 1024} KiB`;
  return `${bytes} B`;
}

/** Renders rows as an aligned text table. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]?.length ?? 0)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padStart(widths[i]!)).join('  ');
  return [line(header), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

/** The value after `name` in argv, or the fallback. */
export function option(argv: string[], name: string, fallback: string): string {
  const i = argv.indexOf(name);
  return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : fallback;
}

/** One row of an end-to-end benchmark: a measurement, its baseline in the same run, the ratio. */
export interface BenchRow {
  measure: string;
  seconds: number;
  MBps?: number;
  baseline?: string;
  ratio?: number;
  target: string;
  note?: string;
}
