// ObjectStore over a local directory. Keys map to relative paths; writes go to a temp file in
// the target directory and are renamed (or linked, for ifAbsent) into place, so a reader sees
// the old object or the new one, and a crash leaves at most a '.tmp-' file that list() skips.
// Symbolic links inside the root are never followed (a planted packs/x -> /elsewhere would read or
// write outside the repository): objects are opened O_NOFOLLOW and a key's directories are
// checked with lstat; a link reads as no object, and writing through one is refused.
// Anything else that is not a regular file where an object should be (a FIFO, socket or device
// planted in the repository) is refused as 'permanent', naming the key: objects are opened
// O_NONBLOCK, so open() of a FIFO returns at once instead of waiting forever for a writer, and
// the opened descriptor is checked with fstat before anything is read.

import { close, constants, fstat, open as openFd, type Dirent, type Stats } from 'node:fs';
import { mkdir, rename, link, unlink, readdir, lstat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { CdpError, StoreError, throwIfAborted } from '../errors.js';
import { TEMP_PREFIX, syncDirectory, syncFile, tempPath, writeNewFile } from '../util/durable-file.js';
import { preadFully } from '../util/positional-io.js';
import { hasBadSegment } from './paths.js';
import { type DeleteManyOptions, type GetOptions, type ListOptions, type ObjectInfo, type ObjectLockState, type ObjectStore, type ObjectVersion, type PutOptions, type Retention, checkDeleteBatch } from './types.js';

const openAsync = promisify(openFd);
const fstatAsync = promisify(fstat);
const closeAsync = promisify(close);

/** Modes of what the store creates (the umask can only take more away). */
const PRIVATE_FILE_MODE = 0o600;
const PRIVATE_DIR_MODE = 0o700;
/** Files fsynced at once by sync(). */
const SYNC_BATCH = 8;

/** lstat calls a listing keeps in flight ahead of the key it yields. */
const STAT_AHEAD = 64;

export class FsStore implements ObjectStore {
  readonly root: string;
  readonly location: string;
  /** Objects put with deferSync, and their directories, not yet made durable. */
  private readonly unsynced = new Set<string>();
  private readonly unsyncedDirs = new Set<string>();

  constructor(root: string) {
    this.root = resolve(root);
    this.location = 'file://' + this.root;
  }

  async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    throwIfAborted(options?.signal);
    const path = this.path(key);
    const range = options?.range;
    if (range !== undefined) checkRange(key, range.offset, range.length);
    // Raw descriptors with the callback API: a ranged GET is the hot path of serve and restore,
    // and FileHandle's promise machinery plus an fstat per call cost more than the read itself.
    let fd: number | undefined;
    try {
      await this.refuseLinkedDirectory(key, 'read');
      // O_NONBLOCK changes nothing for a regular file's reads (pread); it only keeps open() of a
      // FIFO from blocking.
      fd = await openAsync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
      const stats = await fstatAsync(fd);
      if (!stats.isFile()) throw this.notAnObject(key, stats);
      const offset = range?.offset ?? 0;
      const length = range?.length ?? stats.size;
      if (range === undefined) options?.onBodyLength?.(length);
      // The caller's buffer, or one with its own ArrayBuffer (not a pool slice), so callers can
      // transfer it to a worker.
      const into = options?.into;
      const buffer = into !== undefined && into.length >= length ? into.subarray(0, length) : Buffer.allocUnsafeSlow(length);
      const filled = await preadFully(fd, buffer, offset);
      // An empty range reads nothing, so only the size can tell whether it starts past the end.
      const emptyPastEnd = range !== undefined && range.length === 0 && range.offset > stats.size;
      if (filled < length || emptyPastEnd) {
        // Objects never change once written: a short read is a range past the end (or, without a
        // range, a file that shrank while being read).
        const { size } = await fstatAsync(fd);
        if (range !== undefined && range.offset + range.length > size) {
          throw new StoreError('permanent', `range ${range.offset}+${range.length} is past the end of ${key} (${size} bytes) in ${this.location}`, { key });
        }
        throw new StoreError('retryable', `${key} in ${this.location} shrank while being read`, { key });
      }
      return buffer;
    } catch (error) {
      // open() of a socket fails with ENXIO: say what is there instead.
      if ((error as NodeJS.ErrnoException).code === 'ENXIO') {
        const info = await lstat(path).catch(() => undefined);
        if (info !== undefined && !info.isFile()) throw this.notAnObject(key, info);
      }
      throw this.classify(error, key);
    } finally {
      if (fd !== undefined) await closeAsync(fd).catch(() => undefined);
    }
  }

  async put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    throwIfAborted(options?.signal);
    if (options?.retention !== undefined) await this.retain(key, options.retention);
    const path = this.path(key);
    const dir = dirname(path);
    const temp = tempPath(dir);
    try {
      // Objects hold disk contents: only the owner may read them, whatever the umask.
      const firstCreated = await mkdir(dir, { recursive: true, mode: PRIVATE_DIR_MODE });
      // A new directory is an entry in its parent: make each new entry durable too.
      if (firstCreated !== undefined) {
        for (let d = dir; d !== dirname(d); d = dirname(d)) {
          await syncDirectory(dirname(d));
          if (d === firstCreated) break;
        }
      }
      await this.refuseLinkedDirectory(key, 'write');
      await writeNewFile(temp, body, { mode: PRIVATE_FILE_MODE, sync: options?.deferSync !== true });
      throwIfAborted(options?.signal);
      if (options?.ifAbsent === true) {
        // link() fails with EEXIST instead of replacing, which rename() cannot do.
        await link(temp, path).catch((error: unknown) => {
          if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
          throw new StoreError('exists', `${key} already exists in ${this.location}`, { key, cause: error });
        });
        await unlink(temp);
      } else {
        await rename(temp, path);
      }
      if (options?.deferSync === true) {
        // Until sync(), a crash may leave this object empty or partial; callers reference it only after sync().
        this.unsynced.add(path);
        this.unsyncedDirs.add(dir);
      } else await syncDirectory(dir);
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw this.classify(error, key, 'write');
    }
  }

  async sync(options?: { signal?: AbortSignal }): Promise<void> {
    throwIfAborted(options?.signal);
    const files = [...this.unsynced];
    const dirs = [...this.unsyncedDirs];
    this.unsynced.clear();
    this.unsyncedDirs.clear();
    try {
      // Files first, then the directories that name them; a few at a time.
      for (let i = 0; i < files.length; i += SYNC_BATCH) {
        await Promise.all(files.slice(i, i + SYNC_BATCH).map((path) => syncFile(path)));
      }
      for (const dir of dirs) await syncDirectory(dir);
    } catch (error) {
      for (const path of files) this.unsynced.add(path);
      for (const dir of dirs) this.unsyncedDirs.add(dir);
      throw this.classify(error, files[0] ?? '', 'write');
    }
  }

  async head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    throwIfAborted(options?.signal);
    const path = this.path(key);
    try {
      await this.refuseLinkedDirectory(key, 'read');
      const info = await lstat(path);
      if (info.isFile()) return { key, size: info.size };
      if (info.isDirectory() || info.isSymbolicLink()) return undefined;
      throw this.notAnObject(key, info);
    } catch (error) {
      const mapped = this.classify(error, key);
      if (mapped instanceof StoreError && mapped.kind === 'not-found') return undefined;
      throw mapped;
    }
  }

  async *list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    let left = options?.limit ?? Infinity;
    if (left <= 0) return;
    // The walk yields in key order, from after startAfter; stop at the limit.
    for await (const info of this.walk('', prefix, options?.signal, options?.startAfter)) {
      yield info;
      if (--left === 0) return;
    }
  }

  /** A directory keeps no versions: a version id names the file itself. */
  async deleteMany(keys: readonly string[], options?: DeleteManyOptions): Promise<void> {
    checkDeleteBatch(keys, options);
    const io = options?.signal === undefined ? {} : { signal: options.signal };
    for (const key of keys) await this.delete(key, io);
  }

  async objectLock(): Promise<ObjectLockState> {
    return { enabled: false, why: `${this.location} is a local directory, which has no Object Lock` };
  }

  async retain(key: string, _retention: Retention): Promise<void> {
    throw new StoreError('permanent', `cannot lock ${key}: ${this.location} is a local directory, which has no Object Lock`, { key });
  }

  /** Without versions, each object is its own only version. */
  async *listVersions(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectVersion> {
    for await (const info of this.list(prefix, options?.signal === undefined ? {} : { signal: options.signal })) {
      yield { key: info.key, versionId: undefined, latest: true, deleteMarker: false, size: info.size };
    }
  }

  async delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    throwIfAborted(options?.signal);
    const path = this.path(key);
    try {
      await this.refuseLinkedDirectory(key, 'read');
      await unlink(path);
      await syncDirectory(dirname(path));
    } catch (error) {
      const mapped = this.classify(error, key);
      if (mapped instanceof StoreError && mapped.kind === 'not-found') return;
      throw mapped;
    }
  }

  /**
   * Yields the files under `dir` (a key prefix ending in '/', or '' for the root) whose keys start
   * with `prefix`, in byte order. Sorting a directory's entries with '/' appended to directory
   * names puts each subtree exactly where its keys belong among its siblings, so the walk streams.
   */
  private async *walk(dir: string, prefix: string, signal: AbortSignal | undefined, after: string | undefined): AsyncGenerator<ObjectInfo> {
    throwIfAborted(signal);
    let entries: Dirent[];
    try {
      entries = await readdir(join(this.root, dir), { withFileTypes: true });
    } catch (error) {
      const mapped = this.classify(error, dir === '' ? prefix : dir);
      if (mapped instanceof StoreError && mapped.kind === 'not-found') return;
      throw mapped;
    }
    // A link is no object (see the top); any other kind of file is refused where it would be listed.
    for (const entry of entries) {
      const key = dir + entry.name;
      if (entry.isFile() || entry.isDirectory() || entry.isSymbolicLink() || entry.name.startsWith(TEMP_PREFIX)) continue;
      if (key.startsWith(prefix)) throw this.notAnObject(key, entry);
    }
    const children = entries
      .filter((entry) => !entry.name.startsWith(TEMP_PREFIX) && (entry.isFile() || entry.isDirectory()))
      .map((entry) => ({ key: dir + entry.name + (entry.isDirectory() ? '/' : ''), isFile: entry.isFile() }))
      .sort((a, b) => Buffer.compare(Buffer.from(a.key), Buffer.from(b.key)))
      // Nothing at or before `after`: a file's key, or a directory all of whose keys sort before it.
      .filter((child) => after === undefined || (child.isFile ? child.key > after : child.key > after || after.startsWith(child.key)));
    // A file's size takes an lstat; a window of them runs ahead of the one being yielded (one at
    // a time, a listing of 20,000 deltas spent a second waiting on them).
    const sizeOf = (key: string): Promise<number | undefined> =>
      lstat(join(this.root, key)).then(
        (info) => info.size,
        (error: unknown) => {
          // Deleted between readdir and stat: it is simply not there any more.
          const mapped = this.classify(error, key);
          if (mapped instanceof StoreError && mapped.kind === 'not-found') return undefined;
          throw mapped;
        },
      );
    const ahead = new Map<number, Promise<number | undefined>>();
    const statFrom = (i: number): void => {
      for (let j = i; j < children.length && ahead.size < STAT_AHEAD; j++) {
        const child = children[j]!;
        if (ahead.has(j) || !child.isFile || !child.key.startsWith(prefix)) continue;
        const size = sizeOf(child.key);
        size.catch(() => {}); // awaited in turn below
        ahead.set(j, size);
      }
    };
    try {
      for (let i = 0; i < children.length; i++) {
        const child = children[i]!;
        if (child.isFile) {
          if (!child.key.startsWith(prefix)) continue;
          statFrom(i);
          const size = await ahead.get(i)!;
          ahead.delete(i);
          if (size !== undefined) yield { key: child.key, size };
        } else if (child.key.startsWith(prefix) || prefix.startsWith(child.key)) {
          yield* this.walk(child.key, prefix, signal, after);
        }
      }
    } finally {
      await Promise.allSettled(ahead.values());
    }
  }

  /**
   * Throws if a directory on the key's path inside the root is a symbolic link: for reading as
   * "no such object" (it is not in the repository), for writing as a refusal.
   */
  private async refuseLinkedDirectory(key: string, op: 'read' | 'write'): Promise<void> {
    const segments = key.split('/');
    for (let i = 1; i < segments.length; i++) {
      const dir = segments.slice(0, i).join('/');
      const info = await lstat(join(this.root, dir)).catch(() => undefined);
      if (info === undefined) return; // missing: nothing below it to follow
      if (info.isSymbolicLink()) {
        const text = `${dir} in ${this.location} is a symbolic link, which the local store does not follow: remove it`;
        throw op === 'read'
          ? new StoreError('not-found', `${key} does not exist (${text})`, { key })
          : new StoreError('permanent', `cannot write ${key}: ${text}`, { key });
      }
    }
  }

  /**
   * What to say of a non-object found at `key`: a directory is a key prefix, not an object
   * ('not-found', as for any missing key); a FIFO, socket or device is refused.
   */
  private notAnObject(key: string, file: Stats | Dirent): StoreError {
    const where = `${key} in ${this.location}`;
    if (file.isDirectory()) return new StoreError('not-found', `${where} does not exist (it is a directory)`, { key });
    const what = file.isFIFO() ? 'a FIFO (named pipe)' : file.isSocket() ? 'a socket' : file.isCharacterDevice() ? 'a character device' : file.isBlockDevice() ? 'a block device' : 'not a file';
    return new StoreError('permanent', `${where} is ${what}, not a regular file: the repository is damaged (the local store keeps objects only as regular files); remove it`, { key });
  }

  private path(key: string): string {
    const segments = key.split('/');
    const bad = hasBadSegment(key) || segments.some((s) => s.startsWith(TEMP_PREFIX));
    if (bad) {
      throw new StoreError(
        'permanent',
        `invalid key ${JSON.stringify(key)}: keys are '/'-separated relative paths without empty, '.', '..' or '${TEMP_PREFIX}' segments`,
        { key },
      );
    }
    return join(this.root, ...segments);
  }

  /** Maps a Node fs error to a StoreError; our own errors (StoreError, AbortedError) pass through. */
  private classify(error: unknown, key: string, op: 'read' | 'write' = 'read'): unknown {
    if (!(error instanceof Error) || error instanceof CdpError) return error;
    const code = (error as NodeJS.ErrnoException).code;
    const where = `${key} in ${this.location}`;
    switch (code) {
      case 'ENOENT':
      case 'ENOTDIR':
      case 'EISDIR':
      case 'EEXIST':
        // Reading: the key is not an object. Writing: a file and a directory collide on the path.
        return op === 'read'
          ? new StoreError('not-found', `${where} does not exist`, { key, cause: error })
          : new StoreError('permanent', `cannot write ${where}: a file or directory in the way (${code})`, { key, cause: error });
      case 'ELOOP':
        // O_NOFOLLOW met a symbolic link where the object should be.
        return op === 'read'
          ? new StoreError('not-found', `${where} does not exist (it is a symbolic link, which the local store does not follow: remove it)`, { key, cause: error })
          : new StoreError('permanent', `cannot write ${where}: a symbolic link is in the way (${code})`, { key, cause: error });
      case 'ENOSPC':
      case 'EDQUOT':
        return new StoreError('permanent', `cannot write ${where}: the disk is full; free space or use another repository`, { key, cause: error });
      case 'EACCES':
      case 'EPERM':
      case 'EROFS':
        return new StoreError('auth', `permission denied on ${where}: check the directory's owner and mode`, { key, cause: error });
      case 'EMFILE':
      case 'ENFILE':
      case 'EAGAIN':
      case 'EBUSY':
        return new StoreError('retryable', `${where}: ${error.message}`, { key, cause: error });
      default:
        return new StoreError('permanent', `${where}: ${error.message}`, { key, cause: error });
    }
  }
}

function checkRange(key: string, offset: number, length: number): void {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
    throw new StoreError('permanent', `invalid range ${offset}+${length} for ${key}: offset and length must be non-negative integers`, { key });
  }
}
