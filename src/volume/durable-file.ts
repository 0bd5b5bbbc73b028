// Making file system changes durable: a directory's entries (a rename, a link, a new file) are
// on disk only once the directory itself is synced.

import { constants } from 'node:fs';
import { type FileHandle, open } from 'node:fs/promises';

/** fsyncs a directory. File systems that cannot sync one (some FUSE, tmpfs variants) are let be. */
export async function syncDirectory(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(dir, constants.O_RDONLY);
    await handle.sync();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EINVAL' && code !== 'ENOTSUP' && code !== 'EISDIR' && code !== 'EPERM') throw error;
  } finally {
    await handle?.close();
  }
}
