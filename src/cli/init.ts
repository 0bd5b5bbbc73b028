import type { Command } from 'commander';
import { init } from '../core/init.js';
import { CliContext } from './context.js';
import { formatSize, parseSize } from './units.js';

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('create a repository for one volume')
    .option('--size <bytes>', 'volume size, e.g. 10GiB')
    .option('--from <source>', 'take the volume size from this image file or block device')
    .option('--region-size <bytes>', 'unit of change tracking, a power of two from 64KiB to 16MiB', '1MiB')
    .option('--block-size <bytes>', 'unit a small write is shipped in (a patch of the region), a power of two from 512 to the region size', '4KiB')
    .action(async (opts: { size?: string; from?: string; regionSize: string; blockSize: string }, command: Command) => {
      const cli = CliContext.of(command);
      const config = await init({
        store: cli.store(),
        size: opts.size === undefined ? undefined : parseSize(opts.size, '--size'),
        from: opts.from,
        regionSize: parseSize(opts.regionSize, '--region-size'),
        blockSize: parseSize(opts.blockSize, '--block-size'),
        signal: cli.signal,
      });
      cli.result(
        config,
        () =>
          `initialized ${cli.store().location}: volume ${config.volumeId}, ${formatSize(config.volumeSize)} in ${formatSize(config.regionSize)} regions of ${formatSize(config.blockSize)} blocks`,
      );
    });
}
