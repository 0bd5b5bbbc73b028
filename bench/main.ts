// Benchmark entry point: `npm run bench -- <name> [--json]`.

import { renderKernelBench, runKernelBench } from './kernels.js';

const BENCHES: Record<string, { run: () => unknown; render: (result: never) => string }> = {
  kernels: { run: runKernelBench, render: renderKernelBench },
};

function main(argv: string[]): number {
  const json = argv.includes('--json');
  const names = argv.filter((a) => !a.startsWith('--'));
  if (names.length === 0 || names.some((n) => !(n in BENCHES))) {
    process.stderr.write(`usage: npm run bench -- <${Object.keys(BENCHES).join('|')}> [--json]\n`);
    return 2;
  }
  for (const name of names) {
    const bench = BENCHES[name]!;
    const result = bench.run();
    if (json) {
      const rows = (result as { results?: unknown }).results ?? result;
      process.stdout.write(`${JSON.stringify(rows, null, 2)}\n`);
    } else process.stdout.write(`${bench.render(result as never)}\n`);
  }
  return 0;
}

process.exitCode = main(process.argv.slice(2));
