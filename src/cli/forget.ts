import type { Command } from 'commander';
import { forget } from '../core/forget.js';
import { UsageError } from '../errors.js';
import { CALENDAR_RULES, type CalendarRule, type RetentionPolicy } from '../model/retention.js';
import { CliContext } from './context.js';
import { count, parseDuration } from './units.js';

export type ForgetFlags = Partial<Record<`keep${Capitalize<CalendarRule>}`, string>> & {
  keepLast?: string;
  keepWithin?: string;
  keepSeq?: string[];
  dryRun?: boolean;
};

function wholeNumber(text: string, option: string): number {
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < 1) throw new UsageError(`${option} ${JSON.stringify(text)}: give a whole number, at least 1`);
  return n;
}

/** forget's flags as a policy, validated up front (an empty policy is refused by the model). */
export function policyOf(flags: ForgetFlags): RetentionPolicy {
  const policy: RetentionPolicy = {};
  if (flags.keepLast !== undefined) policy.last = wholeNumber(flags.keepLast, '--keep-last');
  if (flags.keepWithin !== undefined) policy.withinMs = parseDuration(flags.keepWithin, '--keep-within');
  for (const rule of CALENDAR_RULES) {
    const text = flags[`keep${rule[0]!.toUpperCase()}${rule.slice(1)}` as keyof ForgetFlags] as string | undefined;
    if (text !== undefined) (policy.calendar ??= {})[rule] = wholeNumber(text, `--keep-${rule}`);
  }
  if (flags.keepSeq !== undefined) policy.seqs = flags.keepSeq.map((s) => wholeNumber(s, '--keep-seq'));
  return policy;
}

/** The --keep-* options of forget and protect. */
export function addKeepOptions(command: Command): Command {
  command
    .option('--keep-last <n>', 'keep the N newest points')
    .option('--keep-within <duration>', 'keep every point within this long of the newest (e.g. 1h, 7d)');
  for (const rule of CALENDAR_RULES) command.option(`--keep-${rule} <n>`, `keep the newest point of each of the N newest ${rule === 'daily' ? 'days' : rule.replace(/ly$/, 's')} (UTC) that have one`);
  return command.option('--keep-seq <seq...>', 'keep these points (sequence numbers, see cdp-s3 log)');
}

/** Whether any --keep-* option was given. */
export function hasKeepOptions(flags: ForgetFlags): boolean {
  return Object.entries(flags).some(([name, value]) => name.startsWith('keep') && value !== undefined);
}

export function registerForget(program: Command): void {
  addKeepOptions(program.command('forget').description('remove points in time from the history by a retention policy (the newest is always kept); prune then frees the space'))
    .option('--dry-run', 'report what would be removed; change nothing')
    .action(async (flags: ForgetFlags, cmd: Command) => {
      const cli = CliContext.of(cmd);
      const policy = policyOf(flags);
      const result = await forget({ store: await cli.repoStore(), policy, dryRun: flags.dryRun, signal: cli.signal });
      cli.result(result, () => {
        const verb = result.dryRun ? 'would remove' : 'removed';
        const ranges = result.removed.map(([a, b]) => (a === b ? String(a) : `${a}-${b}`));
        const shown = ranges.length > 12 ? [...ranges.slice(0, 12), `… (${ranges.length - 12} more ranges)`] : ranges;
        const lines = [`kept ${count(result.keep.length, 'point')} of ${result.points}; ${verb} ${count(result.removedCount, 'point')}${ranges.length > 0 ? `: ${shown.join(', ')}` : ''}`];
        if (result.removedCount > 0 && !result.dryRun) lines.push('run cdp-s3 prune to delete what only the removed points needed');
        return lines.join('\n');
      });
    });
}
