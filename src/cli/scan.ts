import type { Command } from 'commander';
import { scan } from '../core/scan.js';
import { CliContext } from './context.js';
import { EXIT } from './exit-codes.js';
import { count, formatSize, parseCompression } from './units.js';

export function registerScan(program: Command): void {
  program
    .command('scan')
    .description('compare SOURCE with the repository, repair differences, and mark older points in time that cannot be trusted')
    .argument('<source>', 'image file or block device this repository protects')
    .option('--drl <file>', 'scan only the regions listed in this dirty region log, and clear the ones committed')
    .option('--dry-run', 'report only: copy nothing, mark nothing')
    .option('--compression <level>', 'compress what this command stores: off, fast or max (default: as init chose)')
    .action(async (source: string, opts: { drl?: string; dryRun?: boolean; compression?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const result = await scan({
        store: await cli.repoStore(),
        source,
        drl: opts.drl,
        dryRun: opts.dryRun,
        ...(opts.compression === undefined ? {} : { compression: parseCompression(opts.compression) }),
        forceUnlock: cli.forceUnlock,
        signal: cli.signal,
        progress: cli.progress(),
      });
      if (result.discrepancies > 0) cli.setExitCode(EXIT.discrepancies);
      if (result.missingDeltas.length > 0) {
        cli.note(
          `cdp-s3: warning: the chain is missing deltas ${result.missingDeltas.join(', ')}; new points in time go after the newest, never into the gap, and suspects are marked across it (see cdp-s3 log and verify)`,
        );
      }
      if (result.unreadableMarks.length > 0) {
        cli.note(
          `cdp-s3: warning: trust marks ${result.unreadableMarks.join(', ')} cannot be read: what they named as damaged is unknown, so changed regions were stored anew instead of deduplicated against earlier packs (see cdp-s3 verify)`,
        );
      }
      cli.result(result, () => {
        const lines = [`scanned ${count(result.scanned, 'region')} against point in time ${result.scanStartSeq}: ${result.discrepancies} differ`];
        if (result.presentSeq !== undefined) lines.unshift(`sealed pending host changes as point in time ${result.presentSeq}`);
        if (result.discrepancies === 0) lines.push('in sync');
        else {
          lines.push(`  regions: ${result.discrepantRegions.join(', ')}${result.discrepancies > result.discrepantRegions.length ? ', …' : ''}`);
          if (result.writtenDuringScan > 0) lines.push(`  ${count(result.writtenDuringScan, 'region')} written by the host during the scan (left to the next delta)`);
          const verb = result.dryRun ? 'would mark' : 'marked';
          if (result.suspect.length > 0) {
            lines.push(`  ${verb} suspect: points in time ${compactSeqs(result.suspect)}${result.reachedChainStart ? ' (all of them: a differing region is in no delta)' : ''}`);
          }
          if (result.dryRun) lines.push('  dry run: nothing copied or marked');
          else if (result.fixupSeq !== undefined) {
            lines.push(`  repaired ${count(result.repaired, 'region')} as fix-up point in time ${result.fixupSeq} (${count(result.writtenDuringCopy, 'region')} the host wrote during the copy included)`);
          }
        }
        if (result.reuploaded > 0) lines.push(`re-uploaded ${count(result.reuploaded, 'region')} whose stored copy a verify found damaged`);
        lines.push(`fetched ${formatSize(result.bytesFetched)} of metadata from the repository, no region data`);
        return lines.join('\n');
      });
    });
}

/** "3, 5-9, 12" */
function compactSeqs(seqs: number[]): string {
  const sorted = [...seqs].sort((a, b) => a - b);
  const parts: string[] = [];
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === sorted[j]! + 1) j++;
    parts.push(i === j ? String(sorted[i]) : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return parts.join(', ');
}
