// Benchmark entry point: `npm run bench -- <name> [--json] [options]`.

import { crashBenchFailed, renderCrashBench, runCrashBench } from './crash.js';
import { renderCryptoBench, runCryptoBench } from './crypto.js';
import { renderKernelBench, runKernelBench } from './kernels.js';
import { renderNbdBench, runNbdBench } from './nbd.js';
import { renderObjectLockBench, runObjectLockBench } from './object-lock.js';
import { renderPagedBench, runPagedBench } from './paged.js';
import { renderPatchesBench, runPatchesBench } from './patches.js';
import { renderRetentionBench, runRetentionBench } from './retention.js';
import { renderProtectBench, runProtectBench } from './protect.js';
import { renderRepoBench, runRepoBench } from './repo.js';
import { renderScanBench, runScanBench } from './scan.js';
import { renderServeBench, runServeBench } from './serve.js';

interface Bench {
  run: (argv: string[], log: (line: string) => void) => Promise<unknown>;
  render: (result: never) => string;
  /** What --json prints. */
  rows: (result: never) => unknown;
  /** A benchmark that also checks correctness (crash) exits 1 when a check failed. */
  failed?: (result: never) => boolean;
}

const BENCHES: Record<string, Bench> = {
  kernels: {
    run: async () => runKernelBench(),
    render: renderKernelBench,
    rows: (result: ReturnType<typeof runKernelBench>) => result.results,
  },
  nbd: { run: runNbdBench, render: renderNbdBench, rows: (rows: unknown) => rows },
  repo: { run: runRepoBench, render: renderRepoBench, rows: (rows: unknown) => rows },
  scan: { run: runScanBench, render: renderScanBench, rows: (rows: unknown) => rows },
  protect: { run: runProtectBench, render: renderProtectBench, rows: (rows: unknown) => rows },
  serve: { run: runServeBench, render: renderServeBench, rows: (rows: unknown) => rows },
  retention: { run: runRetentionBench, render: renderRetentionBench, rows: (rows: unknown) => rows },
  paged: { run: runPagedBench, render: renderPagedBench, rows: (rows: unknown) => rows },
  patches: { run: runPatchesBench, render: renderPatchesBench, rows: (rows: unknown) => rows },
  crypto: { run: runCryptoBench, render: renderCryptoBench, rows: (rows: unknown) => rows },
  'object-lock': { run: runObjectLockBench, render: renderObjectLockBench, rows: (rows: unknown) => rows },
  crash: { run: runCrashBench, render: renderCrashBench, rows: (rows: unknown) => rows, failed: crashBenchFailed },
};

// As the CLI does: the SDK's notice about Node versions is not a benchmark's output.
process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
// The repositories benchmarks create are encrypted, as any user's (with real keys: a command's
// key derivation is part of what it costs).
process.env['CDP_S3_PASSWORD'] ||= 'cdp-s3 bench password';

async function main(argv: string[]): Promise<number> {
  const json = argv.includes('--json');
  const name = argv[0];
  const bench = name === undefined ? undefined : BENCHES[name];
  if (bench === undefined) {
    process.stderr.write(`usage: npm run bench -- <${Object.keys(BENCHES).join('|')}> [--json] [options]\n`);
    return 2;
  }
  const result = await bench.run(argv.slice(1), (line) => process.stderr.write(`${line}\n`));
  process.stdout.write(json ? `${JSON.stringify(bench.rows(result as never), null, 2)}\n` : `${bench.render(result as never)}\n`);
  return bench.failed?.(result as never) === true ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
