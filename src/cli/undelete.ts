import type { Command } from 'commander';
import { undelete } from '../core/undelete.js';
import { CliContext } from './context.js';

export function registerUndelete(program: Command): void {
  program
    .command('undelete')
    .description('bring back every object the history needs that a delete hid behind a delete marker (versioned and Object Lock buckets); run it while no other cdp-s3 runs')
    .option('--dry-run', 'list what would come back; change nothing')
    .action(async (opts: { dryRun?: boolean }, command: Command) => {
      const cli = CliContext.of(command);
      // The raw store: the config and the key files may be among what is hidden.
      const result = await undelete({ store: cli.store(), dryRun: opts.dryRun, signal: cli.signal });
      cli.result(result, () => {
        const verb = result.dryRun ? 'would bring back' : 'brought back';
        if (result.restored.length === 0) return 'nothing the history needs is hidden by a delete marker';
        const lines = [`${verb} ${result.restored.length} objects (${result.markers} delete markers ${result.dryRun ? 'to remove' : 'removed'})`];
        if (result.keyFiles > 0) lines.push(`${result.keyFiles} of them are key files: if you had removed a key on purpose, run cdp-s3 key remove again`);
        return lines.join('\n');
      });
    });
}
