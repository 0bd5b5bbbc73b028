import type { Command } from 'commander';
import { type LogEntry, type LogOptions, type SummaryUnit, log, summarizeLog } from '../core/log.js';
import { parsePointSelector } from '../core/points.js';
import { UsageError } from '../errors.js';
import { CliContext } from './context.js';
import { count, formatSize } from './units.js';

/** What restore makes of a point: `-` (trusted), its mark kinds (UNKNOWN: marks unreadable), or UNRESTORABLE. */
function trustOf(entry: LogEntry): string {
  if (!entry.restorable) return entry.deltaMissing ? 'MISSING' : 'UNRESTORABLE';
  const kinds = [...new Set(entry.marks.map((m) => m.kind.toUpperCase()))];
  if (entry.marksUnreadable.length > 0) kinds.push('UNKNOWN');
  return kinds.length === 0 ? '-' : kinds.join('+');
}

export function registerLog(program: Command): void {
  program
    .command('log')
    .description('list the points in time, oldest first')
    .option('--since <when>', 'only points from this one on: a sequence number, or an ISO 8601 time (the first point at or after it)')
    .option('--last <n>', 'only the newest N points')
    .option('--summary <unit>', 'one line per hour or day (UTC) that has points: hour or day')
    .action(async (opts: { since?: string; last?: string; summary?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const query = parseLogQuery(opts);
      const result = await log({ store: await cli.repoStore(), signal: cli.signal, ...query.options });
      const before = Math.min(result.first, result.latest + 1) - 1;
      const hidden = before === 1 ? ['(point 1 not shown)'] : before > 1 ? [`(points 1 to ${before} not shown)`] : [];
      if (result.forgotten > 0) hidden.push(`(${count(result.forgotten, 'point')} removed by cdp-s3 forget not listed)`);
      for (const u of result.unreadableForgets) hidden.push(`warning: forget record ${u.key} cannot be read (${u.error}): points it removed may show as MISSING`);
      const unit = query.summary;
      if (unit !== undefined) {
        const lines = summarizeLog(result.entries, unit);
        cli.result(lines, () => {
          const header = [unit === 'hour' ? 'hour (UTC)' : 'day (UTC)', 'points', 'seqs', 'regions', 'stored', 'not trusted'];
          const rows = lines.map((l) => [
            unit === 'hour' ? l.start.slice(0, 13).replace('T', ' ') + ':00' : l.start.slice(0, 10),
            String(l.points),
            `${l.firstSeq}-${l.lastSeq}`,
            String(l.regions),
            formatSize(l.bytes),
            String(l.notTrusted),
          ]);
          const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
          const line = (cells: string[]): string => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
          const title = `${result.location}: volume ${result.volumeId}, ${count(result.entries.length, 'point')} in ${count(lines.length, unit)}`;
          return [title, ...hidden, line(header), ...rows.map(line)].join('\n');
        });
        return;
      }
      cli.result(result.timeline, () => {
        const header = ['seq', 'time (UTC)', 'kind', 'regions', 'stored', 'trust'];
        // Stored and missing deltas in chain order; the last column says why restore would pass one over.
        // A missing delta whose point a span still describes has a row of its own already.
        const described = new Set(result.entries.map((e) => e.seq));
        const rows = [...result.entries, ...result.missing.filter((m) => !described.has(m.seq))]
          .sort((a, b) => a.seq - b.seq)
          .map((e) =>
            e.type === 'missing'
              ? [String(e.seq), '-', '-', '-', '-', 'MISSING']
              : [
                  String(e.seq),
                  e.time.replace('T', ' ').replace('Z', ''),
                  e.kind + (e.spans.length > 0 ? '*' : ''),
                  String(e.regions),
                  formatSize(e.bytes),
                  trustOf(e),
                ],
          );
        const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
        // Marks and scans go on lines of their own under the point in time they follow.
        const notes = new Map<number, string[]>();
        const note = (seq: number, text: string): void => void (notes.get(seq) ?? notes.set(seq, []).get(seq)!).push(text);
        for (const e of result.entries) {
          for (const m of e.marks) note(e.seq, `     ${m.kind.toUpperCase()} (${m.record}): ${m.reason}`);
        }
        for (const m of result.missing) {
          const lost = m.unrestorable.length === 0 ? 'a span stands in for it, so later points still restore' : `points ${m.unrestorable.join(', ')} cannot be restored (no span stands in for it)`;
          note(m.seq, `     ${m.key} is missing: ${lost}; earlier points are not affected (see cdp-s3 verify)`);
        }
        let lastSeq = 0;
        for (const t of result.timeline) {
          if (t.type === 'delta') lastSeq = t.seq;
          else if (t.type === 'scan') {
            const what = t.discrepancies === 0 ? 'in sync' : `${count(t.discrepancies, 'region')} differed${t.fixupSeq === undefined ? '' : `, fix-up ${t.fixupSeq}`}`;
            note(lastSeq, `     scan ${t.time.replace('T', ' ').replace('Z', '')} of ${t.source}: ${count(t.scanned, 'region')}, ${what}${t.suspect.length > 0 ? `, marked ${t.suspect.length} suspect` : ''}`);
          }
        }
        const line = (cells: string[]): string => cells.map((c, i) => (i === 1 || i === 2 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
        const title = `${result.location}: volume ${result.volumeId}, ${formatSize(result.volumeSize)}, ${formatSize(result.regionSize)} regions`;
        if (rows.length === 0) return result.latest > 0 ? `${title}\nno points in time from ${result.first} on (the newest is ${result.latest})` : `${title}\nno points in time yet: run cdp-s3 backup`;
        const footnote = result.entries.some((e) => e.spans.length > 0) ? ['(* a span ends at this point in time: its map is stored merged with the points before it)'] : [];
        const body = rows.flatMap((row) => [line(row), ...(notes.get(Number(row[0])) ?? [])]);
        const warnings = result.unreadableMarks.map(
          (u) =>
            `warning: trust marks ${u.key} cannot be read (${u.error}): points in time ${u.possiblyMarked.join(', ') || '(none yet)'} may be marked ` +
            'and show UNKNOWN; restore passes over them unless --allow-suspect (see cdp-s3 verify)',
        );
        return [title, ...warnings, ...hidden, line(header), ...(notes.get(0) ?? []), ...body, ...footnote].join('\n');
      });
    });
}

/** Validates log's options up front: one-line usage errors naming the option. */
export function parseLogQuery(opts: { since?: string; last?: string; summary?: string }): { options: Pick<LogOptions, 'since' | 'last'>; summary?: SummaryUnit } {
  const options: Pick<LogOptions, 'since' | 'last'> = {};
  if (opts.since !== undefined) {
    const selector = parsePointSelector(opts.since, '--since');
    if (selector.kind === 'latest') throw new UsageError('--since takes a sequence number or an ISO 8601 time; for the newest point use --last 1');
    options.since = selector.kind === 'seq' ? { seq: selector.seq } : { time: selector.time };
  }
  if (opts.last !== undefined) {
    const n = /^\d+$/.test(opts.last.trim()) ? Number(opts.last) : Number.NaN;
    if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`--last ${JSON.stringify(opts.last)}: give a whole number of points, at least 1`);
    options.last = n;
  }
  if (opts.summary !== undefined && opts.summary !== 'hour' && opts.summary !== 'day') {
    throw new UsageError(`--summary ${JSON.stringify(opts.summary)}: give hour or day`);
  }
  return { options, ...(opts.summary === undefined ? {} : { summary: opts.summary }) };
}
