// restore --to - whose reader goes away early (`| head -c 100`): the command stops quietly with
// the documented exit code, no stack trace, and leaves nothing running or written behind. The
// real CLI runs as a child process, since only a real pipe gives EPIPE; its region workers are
// not unref'd, so the process exiting at all shows they were shut down.

import { once } from 'node:events';
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { EXIT } from '../../src/cli/exit-codes.js';
import { backup } from '../../src/core/backup.js';
import { init } from '../../src/core/init.js';
import { parsePointSelector } from '../../src/core/points.js';
import { executeRestore, planRestore } from '../../src/core/restore.js';
import { CdpError } from '../../src/errors.js';
import { openStore } from '../../src/store/open.js';
import { spawnCli } from '../helpers/cli.js';
import { makeImage } from '../helpers/images.js';
import { useS3Fixture } from '../helpers/s3-fixture.js';
import { FsRawObjects, S3RawObjects, snapshot } from '../helpers/raw-objects.js';

const REGION = 64 * 1024;
/** Far more than a pipe and the child's stream buffers hold, so the restore is mid-way when the reader leaves. */
const VOLUME = 8 * 1024 * 1024;
const BUCKET = 'stdout';
const fixture = useS3Fixture('restore-stdout', [BUCKET]);
let counter = 0;

/** A stream that takes `limit` bytes, then fails every write with `code`. */
class FailingOutput extends Writable {
  taken = 0;
  constructor(
    private readonly limit: number,
    private readonly code: string,
  ) {
    super();
  }
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.taken + chunk.length > this.limit) {
      callback(Object.assign(new Error(`write ${this.code}`), { code: this.code }));
      return;
    }
    this.taken += chunk.length;
    callback();
  }
}

/** A stream whose reader never reads: the first write is never taken. */
class StalledOutput extends Writable {
  constructor(private readonly onWrite: () => void) {
    super({ highWaterMark: 1 });
  }
  override _write(_chunk: Buffer, _encoding: BufferEncoding, _callback: (error?: Error | null) => void): void {
    this.onWrite();
  }
}

for (const kind of ['fs', 's3'] as const) {
  describe(`restore --to - when the reader goes away (${kind} store)`, () => {
    async function makeRepo() {
      const work = join(fixture.dir, `${kind}-${++counter}`);
      await mkdir(work, { recursive: true });
      const repo = kind === 'fs' ? join(work, 'repo') : `s3://${BUCKET}/r-${counter}`;
      const raw = kind === 'fs' ? new FsRawObjects(repo) : new S3RawObjects(BUCKET, `r-${counter}`, fixture.server.endpoint);
      if (raw instanceof S3RawObjects) fixture.onTeardown(() => raw.destroy());
      const image = makeImage({ size: VOLUME, regionSize: REGION, seed: counter, zero: 0.1, repeated: 0 });
      const source = join(work, 'disk.img');
      await writeFile(source, image);
      const store = openStore(repo);
      await init({ store, from: source, regionSize: REGION });
      await backup({ store, source, workers: 1 });
      return { work, repo, raw, store, image };
    }

    it('`| head -c 100`: stops quietly with exit code 141, nothing left behind', async () => {
      const { work, repo, raw, image } = await makeRepo();
      const before = await snapshot(raw);
      const files = await readdir(work, { recursive: true });
      const child = spawnCli(['--repo', repo, 'restore', '--at', 'latest', '--to', '-']);
      let stderr = '';
      child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
      const closed = once(child, 'close') as Promise<[number | null, NodeJS.Signals | null]>;
      const head: Buffer[] = [];
      let got = 0;
      for await (const chunk of child.stdout) {
        head.push(chunk as Buffer);
        got += (chunk as Buffer).length;
        if (got >= 100) break; // ends the loop and destroys the stream: the reader is gone
      }
      expect(child.stdout.destroyed).toBe(true);
      const [code, signal] = await closed;
      expect(stderr).toBe('');
      expect(signal).toBeNull();
      expect(code).toBe(EXIT.outputClosed);
      expect(Buffer.concat(head).subarray(0, 100).equals(image.subarray(0, 100))).toBe(true);
      expect(await snapshot(raw)).toEqual(before);
      expect(await readdir(work, { recursive: true })).toEqual(files);
    });

    it('executeRestore: a closed output is OUTPUT_CLOSED, any other write failure a TARGET error naming it', async () => {
      const { store } = await makeRepo();
      for (const [code, expected, message] of [
        ['EPIPE', 'OUTPUT_CLOSED', /standard output was closed before the restore finished/],
        ['ENOSPC', 'TARGET', /standard output: no space left/],
      ] as const) {
        const plan = await planRestore({ store, at: parsePointSelector('latest') });
        const stdout = new FailingOutput(3 * REGION, code);
        const failure = await executeRestore(plan, { to: '-', stdout, workers: 1 }).catch((error: unknown) => error);
        expect(failure).toBeInstanceOf(CdpError);
        expect((failure as CdpError).code).toBe(expected);
        expect((failure as CdpError).message).toMatch(message);
        expect(stdout.taken).toBe(3 * REGION);
      }
    });

    it('executeRestore: cancelled while the output is stalled, it stops with ABORTED', async () => {
      const { store } = await makeRepo();
      const plan = await planRestore({ store, at: parsePointSelector('latest') });
      const cancel = new AbortController();
      const stdout = new StalledOutput(() => cancel.abort());
      const failure = await executeRestore(plan, { to: '-', stdout, workers: 1, signal: cancel.signal }).catch((error: unknown) => error);
      expect(failure).toBeInstanceOf(CdpError);
      expect((failure as CdpError).code).toBe('ABORTED');
    });
  });
}
