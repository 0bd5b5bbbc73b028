import type { Command } from 'commander';
import { init } from '../core/init.js';
import { COMPRESSION_LEVELS } from '../repo/pieces.js';
import { UsageError } from '../errors.js';
import { checkObjectLockPolicy } from '../repo/retaining-store.js';
import { CliContext } from './context.js';
import { formatSize, parseCompression, parseSize } from './units.js';

export function registerInit(program: Command): void {
  program
    .command('init')
    .description('create a repository for one volume (encrypted: the password from $CDP_S3_PASSWORD, --password-file, or asked)')
    .option('--size <bytes>', 'volume size, e.g. 10GiB')
    .option('--from <source>', 'take the volume size from this image file or block device')
    .option('--region-size <bytes>', 'unit of change tracking, a power of two from 64KiB to 16MiB', '1MiB')
    .option('--block-size <bytes>', 'unit a small write is shipped in (a patch of the region), a power of two from 512 to the region size', '4KiB')
    .option('--compression <level>', `how writers compress stored regions by default: ${COMPRESSION_LEVELS.join(', ')}`, 'fast')
    .option('--insecure-no-encryption', 'store everything in the clear (anyone who can read the bucket can read the disk)')
    .option('--object-lock <mode>', 'S3 Object Lock: put every object the history needs under retention, governance or compliance (the bucket must have Object Lock enabled)')
    .option('--lock-days <days>', 'with --object-lock: how many days each retention runs (prune extends what is still needed)')
    .action(async (opts: InitFlags, command: Command) => {
      const cli = CliContext.of(command);
      const compression = parseCompression(opts.compression);
      const objectLock = parseObjectLock(opts);
      let password: string | undefined;
      if (opts.insecureNoEncryption !== true) {
        password = await cli.newPassword('password for the new repository: ', { env: 'CDP_S3_PASSWORD', file: cli.options.passwordFile, flag: '--password-file', otherwise: ' (or pass --insecure-no-encryption)' });
      }
      const store = cli.store();
      const { config, keyId } = await init({
        store,
        size: opts.size === undefined ? undefined : parseSize(opts.size, '--size'),
        from: opts.from,
        regionSize: parseSize(opts.regionSize, '--region-size'),
        blockSize: parseSize(opts.blockSize, '--block-size'),
        compression,
        ...(objectLock === undefined ? {} : { objectLock }),
        ...(cli.kdf === undefined ? {} : { kdf: cli.kdf }),
        ...(password === undefined ? {} : { password }),
        signal: cli.signal,
      });
      cli.result(
        { ...config, ...(keyId === undefined ? {} : { keyId }) },
        () =>
          `initialized ${store.location}: volume ${config.volumeId}, ${formatSize(config.volumeSize)} in ${formatSize(config.regionSize)} regions of ${formatSize(config.blockSize)} blocks, ` +
          (keyId === undefined ? 'NOT encrypted' : `encrypted (key ${keyId})`) +
          `, compression ${config.compression}` +
          (config.objectLock === undefined ? '' : `, Object Lock ${config.objectLock.mode} for ${config.objectLock.days} days`),
      );
    });
}

interface InitFlags {
  size?: string;
  from?: string;
  regionSize: string;
  blockSize: string;
  compression: string;
  insecureNoEncryption?: boolean;
  objectLock?: string;
  lockDays?: string;
}

/** --object-lock and --lock-days come together (checked further by checkObjectLockPolicy). */
function parseObjectLock(opts: InitFlags): { mode: string; days: number } | undefined {
  if (opts.objectLock === undefined && opts.lockDays === undefined) return undefined;
  if (opts.objectLock === undefined) throw new UsageError('--lock-days needs --object-lock governance|compliance');
  if (opts.lockDays === undefined) throw new UsageError(`--object-lock ${opts.objectLock} needs --lock-days N: how many days each retention runs`);
  const days = /^\d+$/.test(opts.lockDays) ? Number(opts.lockDays) : NaN;
  try {
    return checkObjectLockPolicy({ mode: opts.objectLock, days: Number.isNaN(days) ? -1 : days });
  } catch (error) {
    if (Number.isNaN(days)) throw new UsageError(`--lock-days must be a whole number of days, not ${JSON.stringify(opts.lockDays)}`, { cause: error });
    throw new UsageError((error as Error).message, { cause: error });
  }
}
