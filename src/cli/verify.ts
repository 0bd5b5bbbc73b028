import type { Command } from 'commander';
import { verify } from '../core/verify.js';
import { UsageError } from '../errors.js';
import { CliContext } from './context.js';
import { EXIT } from './exit-codes.js';
import { count, formatSize } from './units.js';

export function registerVerify(program: Command): void {
  program
    .command('verify')
    .description('check the repository: every object each point in time needs, and with --read-data the stored bytes')
    .option('--read-data', 'read every stored region and check it against its SHA-256')
    .option('--read-data-subset <percent>', 'read this percentage of the packs, a different slice each run')
    .option('--dry-run', 'report only: record no damage marks')
    .action(async (opts: { readData?: boolean; readDataSubset?: string; dryRun?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      if (opts.readData === true && opts.readDataSubset !== undefined) throw new UsageError('give --read-data or --read-data-subset, not both');
      const percent = opts.readDataSubset === undefined ? undefined : Number(opts.readDataSubset.replace(/%$/, ''));
      if (percent !== undefined && Number.isNaN(percent)) throw new UsageError(`--read-data-subset ${opts.readDataSubset} is not a number: give a percentage such as 10`);
      const result = await verify({
        store: await cli.repoStore(),
        readData: opts.readData,
        readDataSubset: percent,
        dryRun: opts.dryRun,
        signal: cli.signal,
        progress: cli.progress(),
      });
      const atRisk = result.retention?.atRisk ?? [];
      if (result.newProblems > 0 || atRisk.length > 0) cli.setExitCode(EXIT.integrity);
      cli.result(result, () => {
        const lines = [
          `checked ${result.deltas} deltas, ${result.spans} spans, ${result.locations} stored regions in ${result.packs} packs` +
            (result.locationsRead > 0 ? `; read ${result.locationsRead} regions (${formatSize(result.bytesRead)})` : '') +
            (result.subset === undefined ? '' : ` — slice ${result.subset.slice + 1} of ${result.subset.slices}`),
        ];
        for (const p of result.problems.filter((q) => q.known !== true)) {
          const none = p.object === 'span' ? 'no point in time (reads fall back to the runs it merges)' : 'no point in time';
          const affects = p.affects.length === 0 ? none : `points in time ${p.affects.join(', ')}`;
          const regions = p.regions === undefined ? '' : ` (${count(p.regions, 'stored region')})`;
          lines.push(`  ${p.object} ${p.key}: ${p.detail}${regions} — affects ${affects}`);
        }
        const known = result.problems.filter((q) => q.known === true);
        if (known.length > 0) {
          lines.push(`already recorded (points marked damaged by an earlier verify; restore passes over them):`);
          for (const p of known) lines.push(`  ${p.object} ${p.key}: ${p.detail} — points in time ${p.affects.join(', ')}`);
        }
        if (result.retention !== undefined) {
          lines.push(`Object Lock: read the retention of ${result.retention.checked} objects the history needs`);
          for (const r of atRisk.slice(0, 20)) {
            lines.push(`  ${r.key}: ${r.until === undefined ? 'NOT retained' : `retained (${r.mode}) only until ${new Date(r.until).toISOString()}`} — run cdp-s3 prune, which extends it`);
          }
          if (atRisk.length > 20) lines.push(`  and ${atRisk.length - 20} more`);
        }
        if (result.problems.length === 0) lines.push(atRisk.length === 0 ? 'no problems found' : `no damage found, but ${atRisk.length} objects' Object Lock is at risk`);
        else if (result.newProblems === 0) lines.push('no new problems');
        else if (result.damaged.length > 0) {
          lines.push(
            result.record === undefined
              ? `  would mark damaged: ${result.damaged.join(', ')} (dry run)`
              : `  marked damaged: ${result.damaged.join(', ')}; restore passes over them, and the next backup or scan uploads the regions again if the disk still holds them`,
          );
        }
        return lines.join('\n');
      });
    });
}
