import type { Command } from 'commander';
import { log } from '../core/log.js';
import { CliContext } from './context.js';
import { count, formatSize } from './units.js';

export function registerLog(program: Command): void {
  program
    .command('log')
    .description('list the points in time, oldest first')
    .action(async (_opts: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const result = await log({ store: cli.store(), signal: cli.signal });
      cli.result(result.timeline, () => {
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
        // Marks and scans go on lines of their own under the point in time they follow.
        const notes = new Map<number, string[]>();
        const note = (seq: number, text: string): void => void (notes.get(seq) ?? notes.set(seq, []).get(seq)!).push(text);
        for (const e of result.entries) {
          for (const m of e.marks) note(e.seq, `     ${m.kind.toUpperCase()} (${m.record}): ${m.reason}`);
        }
        let lastSeq = 0;
        for (const t of result.timeline) {
          if (t.type === 'delta') lastSeq = t.seq;
          else {
            const what = t.discrepancies === 0 ? 'in sync' : `${count(t.discrepancies, 'region')} differed${t.fixupSeq === undefined ? '' : `, fix-up ${t.fixupSeq}`}`;
            note(lastSeq, `     scan ${t.time.replace('T', ' ').replace('Z', '')} of ${t.source}: ${count(t.scanned, 'region')}, ${what}${t.suspect.length > 0 ? `, marked ${t.suspect.length} suspect` : ''}`);
          }
        }
        const line = (cells: string[]): string => cells.map((c, i) => (i === 1 || i === 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
        const title = `${result.location}: volume ${result.volumeId}, ${formatSize(result.volumeSize)}, ${formatSize(result.regionSize)} regions`;
        if (rows.length === 0) return `${title}\nno points in time yet: run cdp-s3 backup`;
        const footnote = result.entries.some((e) => e.checkpoint) ? ['(* a checkpoint PIT map is stored at this point in time)'] : [];
        const body = rows.flatMap((row, i) => [line(row), ...(notes.get(result.entries[i]!.seq) ?? [])]);
        return [title, line(header), ...(notes.get(0) ?? []), ...body, ...footnote].join('\n');
      });
    });
}
