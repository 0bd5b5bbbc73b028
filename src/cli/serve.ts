import type { Command } from 'commander';
import { describeSkipped, parsePointSelector } from '../core/points.js';
import { CliContext } from './context.js';
import { parseListen, parseSize } from './units.js';

export const DEFAULT_LISTEN = '127.0.0.1:10809';

export { parseListen };

/** nbd://HOST:PORT[/NAME] as qemu and libnbd take it. */
export function nbdUri(host: string, port: number, name = ''): string {
  const h = host.includes(':') ? `[${host}]` : host;
  return `nbd://${h}:${port}${name === '' ? '' : `/${encodeURIComponent(name)}`}`;
}

export function registerServe(program: Command): void {
  program
    .command('serve')
    .description('export a point in time read-only over NBD, straight from the repository (boot or mount it before a restore finishes)')
    .requiredOption('--at <when>', 'latest, a sequence number, or an ISO 8601 time (the newest point at or before it)')
    .option('--listen <address>', 'HOST:PORT or [IPV6]:PORT to listen on', DEFAULT_LISTEN)
    .option('--name <name>', 'also serve it under this export name (it is always the default export too)')
    .option('--allow-suspect', 'take the newest point at or before --at even if a scan marked it suspect or a verify found it damaged')
    .option('--cache-size <size>', 'memory for verified regions read from the repository', '256MiB')
    .action(async (opts: { at: string; listen: string; name?: string; allowSuspect?: boolean; cacheSize: string }, command: Command) => {
      const cli = CliContext.of(command);
      const at = parsePointSelector(opts.at);
      const listen = parseListen(opts.listen);
      const cacheBytes = parseSize(opts.cacheSize, '--cache-size');
      const names = opts.name === undefined || opts.name === '' ? [''] : ['', opts.name];
      // Loaded when the command runs: the other commands need no NBD server.
      const { serve } = await import('../core/serve.js');
      const handle = await serve({
        store: await cli.repoStore(),
        at,
        allowSuspect: opts.allowSuspect,
        listen,
        names,
        cacheBytes,
        signal: cli.signal,
        log: (line) => cli.stderr.write(`cdp-s3: ${line}\n`),
      });
      if (handle.skipped.length > 0) {
        cli.note(`chose point in time ${handle.seq}; passed over ${describeSkipped(handle.skipped)}: see cdp-s3 log, or --allow-suspect for marked ones`);
      }
      if (handle.untrusted.length > 0) cli.note(`point in time ${handle.seq} is marked ${handle.untrusted.join(' and ')}; serving it because of --allow-suspect`);
      cli.result(
        { seq: handle.seq, time: handle.time, host: handle.host, port: handle.port, names, uri: nbdUri(handle.host, handle.port, names.at(-1)) },
        () => `serving point in time ${handle.seq} (${handle.time}) read-only at ${nbdUri(handle.host, handle.port, names.at(-1))}`,
      );
      await handle.closed;
    });
}
