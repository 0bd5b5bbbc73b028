import type { Command } from 'commander';
import { addKey, changePassword, listKeys, removeKey } from '../core/keys.js';
import { CliContext } from './context.js';

export function registerKey(program: Command): void {
  const key = program.command('key').description("manage the passwords that open an encrypted repository (its keys/)");
  const newPassword = (cli: CliContext, file: string | undefined): Promise<string> =>
    cli.newPassword('new password: ', { env: 'CDP_S3_NEW_PASSWORD', file, flag: '--new-password-file', otherwise: '' });

  key
    .command('list')
    .description('list the keys; the one the password opens is marked *')
    .action(async (_opts: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const keys = await listKeys(await cli.repoStore(), cli.signal);
      cli.result(keys, () =>
        keys
          .map((k) => `${k.current ? '*' : ' '} ${k.id}  ${k.created === undefined ? '?' : new Date(k.created).toISOString()}  ${k.host ?? ''}${k.error === undefined ? '' : `  unreadable: ${k.error}`}`)
          .join('\n'),
      );
    });

  key
    .command('add')
    .description('add a key with a new password (from $CDP_S3_NEW_PASSWORD, --new-password-file, or asked)')
    .option('--new-password-file <file>', "the new key's password, read from this file's first line")
    .action(async (opts: { newPasswordFile?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const store = await cli.repoStore();
      const added = await addKey(store, await newPassword(cli, opts.newPasswordFile), { signal: cli.signal, ...(cli.kdf === undefined ? {} : { kdf: cli.kdf }) });
      cli.result({ id: added.id }, () => `added key ${added.id}`);
    });

  key
    .command('remove <id>')
    .description('remove a key (not the one the password opens, nor the last one)')
    .action(async (id: string, _opts: unknown, command: Command) => {
      const cli = CliContext.of(command);
      const { retainedUntil } = await removeKey(await cli.repoStore(), id, cli.signal);
      cli.result({ removed: id, ...(retainedUntil === undefined ? {} : { retainedUntil: new Date(retainedUntil).toISOString() }) }, () => `removed key ${id}${keptNote(retainedUntil)}`);
    });

  key
    .command('passwd')
    .description("change the password of the key the password opens (a new key replaces it)")
    .option('--new-password-file <file>', 'the new password, read from this file\'s first line')
    .action(async (opts: { newPasswordFile?: string }, command: Command) => {
      const cli = CliContext.of(command);
      const store = await cli.repoStore();
      const { key: added, oldRetainedUntil } = await changePassword(store, await newPassword(cli, opts.newPasswordFile), { signal: cli.signal, ...(cli.kdf === undefined ? {} : { kdf: cli.kdf }) });
      cli.result(
        { id: added.id, ...(oldRetainedUntil === undefined ? {} : { oldRetainedUntil: new Date(oldRetainedUntil).toISOString() }) },
        () => `password changed: key ${added.id} replaces the old one${keptNote(oldRetainedUntil)}`,
      );
    });
}

/** What a removed key file under Object Lock still allows: the old password opens it as long as its version stays. */
function keptNote(until: number | undefined): string {
  return until === undefined
    ? ''
    : ` (Object Lock keeps its bytes in the bucket until ${new Date(until).toISOString()}: until then its password still opens the repository for anyone who can read old versions)`;
}
