import type { Command } from 'commander';
import { prune } from '../core/prune.js';
import { UsageError } from '../errors.js';
import { CliContext } from './context.js';
import { count, formatSize, parseDuration } from './units.js';

/** --grace: a duration, where (unlike intervals) 0 is allowed: "0", "0s", "0h". */
export function parseGrace(text: string): number {
  if (/^\s*0+(\.0+)?\s*[a-z]*\s*$/i.test(text)) {
    if (!/^\s*0+(\.0+)?\s*(ms|s|m|min|h|d)?\s*$/i.test(text)) throw new UsageError(`--grace ${JSON.stringify(text)} is not a duration: use e.g. 0s, 1h, 24h`);
    return 0;
  }
  return parseDuration(text, '--grace');
}

/** --max-unused: a percentage of the bytes the chain uses ("5%", "5", "0"), or "unlimited" (never repack). */
export function parseMaxUnused(text: string): number {
  if (/^\s*unlimited\s*$/i.test(text)) return Infinity;
  const match = /^\s*(\d+(?:\.\d+)?)\s*%?\s*$/.exec(text);
  if (match === null || Number(match[1]) > 100) throw new UsageError(`--max-unused ${JSON.stringify(text)} is not a percentage from 0% to 100%: use e.g. 5%, 0 or unlimited`);
  return Number(match[1]) / 100;
}

export function registerPrune(program: Command): void {
  program
    .command('prune')
    .description('fold forgotten points into the kept ones (compaction), then delete what no kept point in time needs, after a grace period')
    .option('--grace <duration>', 'an object is deleted once a prune has found it unreferenced this long ago (0s: at once, only with no other writer)', '24h')
    .option('--max-unused <percent>', 'repack partly used packs until at most this share more than the kept points use stays stored (0: every partly used pack; unlimited: never)', '5%')
    .option('--repack-small', 'also merge fully used packs smaller than a quarter of the pack size (fewer objects)')
    .option('--dry-run', 'report what would be deleted; change nothing')
    .action(async (opts: { grace: string; maxUnused: string; repackSmall?: boolean; dryRun?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      const graceMs = parseGrace(opts.grace);
      const maxUnused = parseMaxUnused(opts.maxUnused);
      const result = await prune({ store: await cli.repoStore(), graceMs, maxUnused, repackSmall: opts.repackSmall === true, dryRun: opts.dryRun, signal: cli.signal });
      cli.result(result, () => {
        const would = result.dryRun ? 'would delete' : 'deleted';
        const c = result.compaction;
        const lines = [
          c === undefined
            ? `compaction skipped: ${result.compactionSkipped ?? 'not run'}`
            : c.rewritten + c.emptied === 0
              ? `nothing to compact (generation ${c.generation})`
              : `${result.dryRun ? 'would compact' : 'compacted'}: generation ${c.generation}, ${count(c.rewritten, 'run')} rewritten, ${count(c.emptied, 'run')} folded away`,
          ...(result.repack === undefined
            ? []
            : [
                result.repack.packsRepacked === 0
                  ? `packs hold ${formatSize(result.repack.storedBytes)} for ${formatSize(result.repack.usedBytes)} used: nothing to repack${result.repack.skipped === undefined ? '' : ` (${result.repack.skipped})`}`
                  : `${result.dryRun ? 'would repack' : 'repacked'} ${count(result.repack.packsRepacked, 'pack')}: ${formatSize(result.repack.bytesCopied)} copied into ${count(result.repack.packsWritten, 'new pack')}, ${count(result.repack.runsRewritten, 'run')} rewritten, ${formatSize(result.repack.bytesFreed)} to free`,
              ]),
          `read ${count(result.runsRead, 'run')} up to point ${result.latest}: ${result.referenced} of ${result.objects} packs and page packs referenced`,
          `${would} ${count(result.deleted.length, 'unreferenced object')} (${formatSize(result.bytesDeleted)})`,
        ];
        if (result.waiting.length > 0) {
          const next = Math.min(...result.waiting.map((w) => w.deletableAt));
          const bytes = result.waiting.reduce((sum, w) => sum + w.bytes, 0);
          lines.push(
            `${count(result.waiting.length, 'unreferenced object')} (${formatSize(bytes)}) ${result.dryRun ? 'would wait' : 'wait'} for the grace of ${opts.grace}: the first can go from ${new Date(next).toISOString()} (run prune again then)`,
          );
        }
        if (result.inFlight > 0) lines.push(`${count(result.inFlight, 'object')} of a writer's next point in time left alone`);
        if (result.locked.length > 0) {
          const first = Math.min(...result.locked.map((l) => l.until));
          const bytes = result.locked.reduce((sum, l) => sum + l.bytes, 0);
          lines.push(`${count(result.locked.length, 'unreferenced object')} (${formatSize(bytes)}) still under Object Lock, not deleted: the first lock runs out at ${new Date(first).toISOString()} (run prune again then)`);
        }
        const r = result.retention;
        if (r !== undefined) {
          const until = r.until === undefined ? 'not recorded' : new Date(r.until).toISOString();
          const next = r.nextDue === undefined ? '' : `; next extension from ${new Date(r.nextDue).toISOString()}`;
          lines.push(
            r.due
              ? `${result.dryRun ? 'would extend' : 'extended'} the Object Lock of ${count(r.extended, 'object')}${result.dryRun ? '' : ` until ${until}`}${result.dryRun ? '' : next}`
              : `Object Lock: what the history needs is retained until ${until}${next}`,
          );
        }
        if (result.versionsSwept > 0) lines.push(`deleted ${count(result.versionsSwept, 'older version')} of locks, status and prune records`);
        if (result.sweepRefused !== undefined) lines.push(`warning: the older versions of locks, status and prune records could not be deleted: ${result.sweepRefused}`);
        return lines.join('\n');
      });
    });
}

