import type { Command } from 'commander';
import { log } from '../core/log.js';
import { CliContext } from './context.js';
import { formatSize } from './units.js';

export function registerLog(program: Command): void {
  program
    .command('log')
    .description('list the points in time, oldest first')
    .action(async (_opts: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const result = await log({ store: cli.store(), signal: cli.signal });
      cli.result(result.entries, () => {
        const header = ['seq', 'time (UTC)', 'kind', 'regions', 'stored', 'suspect'];
        const rows = result.entries.map((e) => [
          String(e.seq),
          e.time.replace('T', ' ').replace('Z', ''),
          e.kind + (e.checkpoint ? '*' : ''),
          String(e.regions),
          formatSize(e.bytes),
          e.suspect ? 'SUSPECT' : '-',
        ]);
        const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
        const line = (cells: string[]): string => cells.map((c, i) => (i === 1 || i === 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
        const title = `${result.location}: volume ${result.volumeId}, ${formatSize(result.volumeSize)}, ${formatSize(result.regionSize)} regions`;
        if (rows.length === 0) return `${title}\nno points in time yet: run cdp-s3 backup`;
        const footnote = result.entries.some((e) => e.checkpoint) ? ['(* a checkpoint PIT map is stored at this point in time)'] : [];
        return [title, line(header), ...rows.map(line), ...footnote].join('\n');
      });
    });
}
