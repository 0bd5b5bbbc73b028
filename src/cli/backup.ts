import { readFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { backup } from '../core/backup.js';
import { type ByteRange, parseChangedRanges } from '../core/changed-ranges.js';
import { UsageError } from '../errors.js';
import { CliContext } from './context.js';
import { formatSize, parseCompression } from './units.js';

async function readChanged(file: string): Promise<ByteRange[]> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw new UsageError(`--changed ${file} cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`, { cause: error });
  }
  return parseChangedRanges(text, `--changed ${file}`);
}

export function registerBackup(program: Command): void {
  program
    .command('backup')
    .description('commit the next point in time of SOURCE (the first backup is the base)')
    .argument('<source>', 'image file or block device')
    .option('--changed <file>', 'read only these byte ranges ("OFFSET LENGTH" per line) from a change tracker')
    .option('--drl <file>', 'read only the regions this dirty region log lists, and clear them once committed')
    .option('--compression <level>', 'compress what this command stores: off, fast or max (default: as init chose)')
    .action(async (source: string, opts: { changed?: string; drl?: string; compression?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const result = await backup({
        store: await cli.repoStore(),
        source,
        changed: opts.changed === undefined ? undefined : await readChanged(opts.changed),
        drl: opts.drl,
        ...(opts.compression === undefined ? {} : { compression: parseCompression(opts.compression) }),
        signal: cli.signal,
        progress: cli.progress(),
        forceUnlock: cli.forceUnlock,
      });
      if (result.missingDeltas.length > 0) {
        cli.note(
          `cdp-s3: warning: the chain is missing deltas ${result.missingDeltas.join(', ')}; point in time ${result.seq} was added after the newest (a span past the gap stands in for it), never into the gap (see cdp-s3 log and verify)`,
        );
      }
      if (result.unreadableMarks.length > 0) {
        cli.note(
          `cdp-s3: warning: trust marks ${result.unreadableMarks.join(', ')} cannot be read: what they named as damaged is unknown, so changed regions were stored anew instead of deduplicated against earlier packs (see cdp-s3 verify)`,
        );
      }
      if (result.spanError !== undefined) {
        cli.note(`cdp-s3: warning: point in time ${result.seq} is committed, but a span due at it was not written (${result.spanError}); later reads fold its parts instead, and the next commit writes it`);
      }
      cli.result(
        result,
        () =>
          `point in time ${result.seq} (${result.kind}, ${result.time}): ${result.regionsScanned} regions scanned, ${result.regionsChanged} changed` +
            `${result.regionsPatched > 0 ? ` (${result.regionsPatched} as patches)` : ''}, ` +
          `${formatSize(result.bytesStored)} stored in ${result.packs} pack${result.packs === 1 ? '' : 's'}${result.spans > 0 ? `, ${result.spans} span${result.spans === 1 ? '' : 's'} written` : ''}`,
      );
    });
}
