import type { Command } from 'commander';
import { describeSkipped, parsePointSelector } from '../core/points.js';
import { executeRestore, planRestore, planTotals } from '../core/restore.js';
import { UsageError } from '../errors.js';
import { CliContext } from './context.js';
import { formatSize } from './units.js';

export function registerRestore(program: Command): void {
  program
    .command('restore')
    .description('write a point in time of the volume to a file, a block device or stdout')
    .requiredOption('--at <when>', 'latest, a sequence number, or an ISO 8601 time (the newest point at or before it)')
    .option('--to <target>', 'file, block device, or - for stdout')
    .option('--dry-run', 'print the plan and write nothing')
    .option('--force', 'replace an existing file, write onto the disk this repository protects, or let --reuse-target overwrite a file of another size')
    .option('--reuse-target', 'the target holds an older copy: hash it and download and write only the regions that differ')
    .option('--allow-suspect', 'take the newest point at or before --at even if a scan marked it suspect or a verify found it damaged')
    .action(async (opts: { at: string; to?: string; dryRun?: boolean; force?: boolean; allowSuspect?: boolean; reuseTarget?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const at = parsePointSelector(opts.at);
      if (opts.to === undefined && opts.dryRun !== true) throw new UsageError('restore needs --to FILE|DEVICE|- (or --dry-run)');
      const plan = await planRestore({ store: await cli.repoStore(), at, allowSuspect: opts.allowSuspect, signal: cli.signal });
      if (plan.skipped.length > 0) {
        cli.note(`chose point in time ${plan.seq}; passed over ${describeSkipped(plan.skipped)}: see cdp-s3 log, or --allow-suspect for marked ones`);
      }
      if (plan.untrusted.length > 0) cli.note(`point in time ${plan.seq} is marked ${plan.untrusted.join(' and ')}; restoring it because of --allow-suspect`);
      const summary = {
        seq: plan.seq,
        time: plan.time,
        kind: plan.kind,
        volumeSize: plan.volumeSize,
        regionSize: plan.regionSize,
        regions: plan.regions,
        skipped: plan.skipped,
        untrusted: plan.untrusted,
      };
      const totalsOf = (t: Awaited<ReturnType<typeof planTotals>>) => ({
        dataRegions: t.dataRegions,
        zeroRegions: t.zeroRegions,
        downloadBytes: t.downloadBytes,
        packs: t.packs,
        requests: t.requests,
      });
      if (opts.dryRun === true) {
        const totals = await planTotals(plan, cli.signal);
        cli.result(
          { dryRun: true, ...summary, ...totalsOf(totals) },
          () =>
            `would restore point in time ${plan.seq} (${plan.kind}, ${plan.time}): ${totals.dataRegions} data regions (${formatSize(totals.downloadBytes)} ` +
            `in ${totals.requests} ranged GETs from ${totals.packs} packs) and ${totals.zeroRegions} zero regions, ${formatSize(plan.volumeSize)} in all`,
        );
        return;
      }
      const toStdout = opts.to === '-';
      if (toStdout && cli.json) throw new UsageError('--json and --to - both write to stdout; choose one');
      if (toStdout && opts.reuseTarget === true) throw new UsageError('--reuse-target needs a file or device to compare with, not stdout');
      const result = await executeRestore(plan, {
        to: opts.to!,
        force: opts.force,
        reuseTarget: opts.reuseTarget,
        signal: cli.signal,
        progress: cli.progress(),
        stdout: cli.stdout,
      });
      if (toStdout) {
        cli.note(`restored point in time ${plan.seq} (${plan.time}) to stdout, verified`);
        return;
      }
      const { totals, ...rest } = result;
      cli.result(
        { ...summary, ...totalsOf(totals), ...rest },
        () =>
          `restored point in time ${plan.seq} (${plan.kind}, ${plan.time}) to ${result.target}: ${formatSize(result.bytesWritten)}, ` +
          `${formatSize(result.bytesDownloaded)} downloaded${result.regionsReused === undefined ? '' : `, ${result.regionsReused} of ${plan.regions} regions already matched`}, every region verified`,
      );
    });
}
