import type { Command } from 'commander';
import { UsageError } from '../errors.js';
import { CliContext } from './context.js';
import { type ForgetFlags, addKeepOptions, hasKeepOptions, policyOf } from './forget.js';
import { parseCompression, parseDuration, parseListen, parseSize } from './units.js';

export function registerProtect(program: Command): void {
  const command = program
    .command('protect')
    .description('serve SOURCE over NBD and protect every write: a crash-consistent point in time every interval')
    .argument('<source>', 'image file or block device; hosts write it through the NBD export only')
    .option('--listen <host:port>', 'NBD address', '127.0.0.1:10809')
    .option('--name <name>', 'also export under this name (the default, empty name always works)')
    .option('--interval <duration>', 'time between points in time', '5s')
    .option('--drl <file>', 'dirty region log (created if missing)', '')
    .option('--spool-dir <dir>', 'a directory of its own where points in time wait while the store is unreachable (default: the DRL path + .spool)')
    .option('--spool-size <bytes>', 'most bytes the spool may hold; past it intervals coalesce', '1GiB')
    .option('--scan-every <duration>', 'run an integrity scan on this schedule (e.g. 24h); SIGUSR1 runs one now')
    .option('--prune-every <duration>', 'apply the --keep-* policy (forget, then prune with a 24 h grace) on this schedule (default 1h)')
    .option('--compression <level>', 'compress what this command stores: off, fast or max (default: as init chose)');
  addKeepOptions(command);
  command.action(
    async (
      source: string,
      opts: ForgetFlags & { listen: string; name?: string; interval: string; drl: string; scanEvery?: string; spoolDir?: string; spoolSize: string; pruneEvery?: string; compression?: string },
      command: Command,
    ) => {
      const cli = CliContext.of(command);
      if (opts.pruneEvery !== undefined && !hasKeepOptions(opts)) throw new UsageError('--prune-every applies a retention policy: give it one with --keep-last, --keep-within, --keep-<unit> or --keep-seq');
      const retention = hasKeepOptions(opts)
        ? { policy: policyOf(opts), everyMs: parseDuration(opts.pruneEvery ?? '1h', '--prune-every') }
        : undefined;
      const log = (line: string): void => void cli.stderr.write(`cdp-s3 protect: ${line}\n`);
      if (opts.drl === '' && source.startsWith('/dev/')) {
        throw new UsageError(`protecting a block device needs --drl FILE on persistent storage (e.g. /var/lib/cdp-s3/${source.slice(5).replace(/\//g, '-')}.drl)`);
      }
      // Loaded when the command runs: the other commands (status above all) need no NBD server.
      const { protect } = await import('../core/protect.js');
      const handle = await protect({
        store: await cli.repoStore(),
        source,
        drl: opts.drl === '' ? `${source}.cdp-s3-drl` : opts.drl,
        listen: parseListen(opts.listen),
        names: opts.name === undefined ? [] : [opts.name],
        intervalMs: parseDuration(opts.interval, '--interval'),
        scanEveryMs: opts.scanEvery === undefined ? undefined : parseDuration(opts.scanEvery, '--scan-every'),
        ...(retention === undefined ? {} : { retention }),
        spoolDir: opts.spoolDir,
        ...(opts.compression === undefined ? {} : { compression: parseCompression(opts.compression) }),
        spoolBytes: parseSize(opts.spoolSize, '--spool-size'),
        forceUnlock: cli.forceUnlock,
        signal: cli.signal,
        log,
      });
      // Listen for scan requests before telling anyone where the export is.
      const onScanRequest = (): void => {
        log('scan requested');
        handle.scanNow().catch((error: unknown) => log(`scan failed: ${(error as Error).message}`));
      };
      process.on('SIGUSR1', onScanRequest);
      const url = `nbd://${handle.host.includes(':') ? `[${handle.host}]` : handle.host}:${handle.port}`;
      cli.result({ source, host: handle.host, port: handle.port, names: ['', ...(opts.name === undefined ? [] : [opts.name])] }, () =>
        `protecting ${source} at ${url}${opts.name === undefined ? '' : ` (and ${url}/${opts.name})`}, a point in time every ${opts.interval}`,
      );
      try {
        // Runs until SIGINT/SIGTERM: then drains (finish requests, ship a last delta) and exits 0.
        await new Promise<void>((resolve) => {
          if (cli.signal.aborted) resolve();
          cli.signal.addEventListener('abort', () => resolve(), { once: true });
        });
        const final = await handle.stop();
        log(`stopped; newest point in time ${final.seq}${final.unshippedRegions > 0 ? `, ${final.unshippedRegions} regions not shipped (kept in the DRL for the next start)` : ''}`);
      } finally {
        process.off('SIGUSR1', onScanRequest);
      }
    },
  );
}
