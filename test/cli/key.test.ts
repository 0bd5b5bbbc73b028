// Passwords and keys on the command line: where a password comes from, what a missing or wrong
// one does (exit 9, one line), and key list / add / passwd / remove.

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { makeImage } from '../helpers/images.js';
import { cli } from '../helpers/cli.js';

let dir: string;
const saved = { ...process.env };
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-key-cli-'));
});
afterEach(() => {
  process.env = { ...saved };
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('passwords and keys (command line)', () => {
  it('takes the password from the environment or a file, refuses a missing or wrong one with exit 9, and manages keys', async () => {
    const source = join(dir, 'disk.img');
    await writeFile(source, makeImage({ size: 1024 * 1024, regionSize: 64 * 1024, seed: 1 }));
    const repo = join(dir, 'repo');
    delete process.env['CDP_S3_PASSWORD'];
    // No password anywhere (standard input is no terminal here): init refuses, naming the ways to give one.
    const refused = await cli('--repo', repo, 'init', '--from', source, '--region-size', '64KiB');
    expect(refused.code).toBe(EXIT.password);
    expect(refused.stderr).toMatch(/^cdp-s3: no password given: set CDP_S3_PASSWORD, pass --password-file FILE, or run on a terminal \(or pass --insecure-no-encryption\)/);
    const missingFile = await cli('--repo', repo, '--password-file', join(dir, 'nope'), 'init', '--from', source);
    expect(missingFile.code).toBe(EXIT.usage);
    expect(missingFile.stderr).toMatch(/cannot read --password-file .*nope: ENOENT/);

    const passwordFile = join(dir, 'password');
    await writeFile(passwordFile, 'first password\n');
    const made = await cli('--repo', repo, '--password-file', passwordFile, 'init', '--from', source, '--region-size', '64KiB', '--json');
    expect(made.code, made.stderr).toBe(0);
    expect(JSON.parse(made.stdout)).toMatchObject({ encryption: 'aes-256-gcm', digest: 'hmac-sha256', compression: 'fast', keyId: expect.stringMatching(/^[0-9a-f]{16}$/) });
    expect((await cli('--repo', repo, '--password-file', passwordFile, 'backup', source)).code).toBe(0);

    const noPassword = await cli('--repo', repo, 'log');
    expect(noPassword.code).toBe(EXIT.password);
    expect(noPassword.stderr).toMatch(/is encrypted and no password was given: set CDP_S3_PASSWORD, pass --password-file FILE, or run on a terminal to be asked/);
    process.env['CDP_S3_PASSWORD'] = 'wrong';
    const wrong = await cli('--repo', repo, 'log');
    expect(wrong.code).toBe(EXIT.password);
    expect(wrong.stderr).toMatch(/the password opens none of the 1 key of /);

    process.env['CDP_S3_PASSWORD'] = 'first password';
    process.env['CDP_S3_NEW_PASSWORD'] = 'second password';
    const added = await cli('--repo', repo, 'key', 'add', '--json');
    expect(added.code, added.stderr).toBe(0);
    const secondId = (JSON.parse(added.stdout) as { id: string }).id;
    const listed = await cli('--repo', repo, 'key', 'list');
    expect(listed.stdout.split('\n').filter((line) => line.startsWith('*'))).toHaveLength(1);
    expect(listed.stdout).toContain(`  ${secondId}  `);
    // The key in use cannot be removed; the other one can, with this one's password.
    process.env['CDP_S3_PASSWORD'] = 'second password';
    const own = await cli('--repo', repo, 'key', 'remove', secondId);
    expect(own.code).toBe(EXIT.password);
    expect(own.stderr).toMatch(/is the one this password opens/);
    const firstId = JSON.parse(made.stdout).keyId as string;
    expect((await cli('--repo', repo, 'key', 'remove', firstId)).code).toBe(0);
    // passwd: the new password opens it, the old one no longer does; the point restores.
    process.env['CDP_S3_NEW_PASSWORD'] = 'third password';
    expect((await cli('--repo', repo, 'key', 'passwd')).code).toBe(0);
    expect((await cli('--repo', repo, 'log')).code).toBe(EXIT.password);
    process.env['CDP_S3_PASSWORD'] = 'third password';
    expect((await cli('--repo', repo, 'restore', '--at', 'latest', '--to', join(dir, 'restored.img'))).code).toBe(0);
    // A plain repository needs no password, and has no keys.
    delete process.env['CDP_S3_PASSWORD'];
    const plain = join(dir, 'plain');
    expect((await cli('--repo', plain, 'init', '--from', source, '--insecure-no-encryption')).code).toBe(0);
    expect((await cli('--repo', plain, 'backup', source)).code).toBe(0);
    const noKeys = await cli('--repo', plain, 'key', 'list');
    expect(noKeys.code).toBe(EXIT.password);
    expect(noKeys.stderr).toMatch(/is not encrypted: it has no keys/);
  });
});
