import type { Command } from 'commander';
import { status } from '../core/status.js';
import { CliContext } from './context.js';
import { formatDuration, formatSize } from './units.js';

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('the newest point in time, the last scan, and each running protect: lag, dirty regions, pre-images')
    .action(async (_opts: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const result = await status({ store: await cli.repoStore(), signal: cli.signal });
      cli.result(result, () => {
        const lines = [`${result.location}: volume ${result.volumeId}, ${formatSize(result.volumeSize)}`];
        lines.push(result.newest === undefined ? 'no points in time yet' : `newest point in time ${result.newest.seq} (${result.newest.kind}, ${result.newest.time})`);
        if (result.missingDeltas.length > 0) {
          lines.push(
            `missing deltas: ${result.missingDeltas.join(', ')}; ` +
              (result.unrestorable.length === 0 ? 'spans stand in for them' : `points in time ${result.unrestorable.join(', ')} cannot be restored`) +
              ' (see cdp-s3 log and verify)',
          );
        }
        for (const u of result.unreadableMarks) {
          lines.push(
            `warning: trust marks ${u.key} cannot be read (${u.error}); restore treats the points in time it may concern${u.newestSeq === undefined ? '' : ` (up to ${u.newestSeq})`} as possibly marked (see cdp-s3 verify)`,
          );
        }
        if (result.untrusted.length > 0) lines.push(`untrusted points in time: ${result.untrusted.join(', ')} (see cdp-s3 log)`);
        const scan = result.lastScan;
        lines.push(
          scan === undefined
            ? 'no scan yet'
            : `last scan ${scan.time}: ${scan.scanned} regions, ${scan.discrepancies === 0 ? 'in sync' : `${scan.discrepancies} differed, fix-up ${scan.fixupSeq}`}`,
        );
        const lock = result.objectLock;
        if (lock !== undefined) {
          lines.push(
            `Object Lock ${lock.mode}, ${lock.days} days: what the history needs is retained until ${lock.until}` +
              (lock.due ? ` — WARNING: its extension was due from ${lock.nextDue}: run cdp-s3 prune, which extends it` : `; next extension from ${lock.nextDue} (cdp-s3 prune)`),
          );
        }
        for (const p of result.protects) {
          const state = !p.running ? 'stopped' : p.stale ? 'NOT REPORTING (died?)' : 'running';
          lines.push(
            `protect ${p.source} on ${p.host} (pid ${p.pid}) ${state}, reported ${p.updated}: lag ${formatDuration(p.lagMs / 1000)}, ` +
              `${p.unshippedRegions} regions unshipped, DRL ${p.drlRegions} regions, pre-images ${formatSize(p.preimageBytes)}, ` +
              `spool ${p.spooledPoints ?? 0} points in time (${formatSize(p.spoolBytes ?? 0)})` +
              (p.base == null ? '' : `, taking the base: ${p.base.phase} ${p.base.regionsDone}/${p.base.regionsTotal} regions`) +
              (p.lastShipError === undefined ? '' : `, last shipping error: ${p.lastShipError}`),
          );
        }
        return lines.join('\n');
      });
    });
}
