// The dirty region log (DRL): a local, crash-safe file listing the regions of the primary volume
// that were written but are not yet committed to the repository. A write marks its regions here
// durably before it is acknowledged; the bits are cleared once the delta holding those regions
// commits. A scan or backup given the DRL reads only the regions it lists.
//
// The file is a fixed header and two slots, each a whole copy of the bitmap with a generation
// counter and a SHA-256 that also covers the header. An update writes the inactive slot with the
// next generation and syncs it; a reader takes the valid slot with the higher generation. A crash
// mid-update therefore leaves the old state or the new one, never a mix. A log whose header is
// damaged, whose slots are both damaged, or that belongs to another volume is refused: treating
// it as empty would silently skip written regions. The layout is in docs/FORMAT.md.
//
// One process owns a DRL at a time; this class does not lock the file against other processes.

import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { copyFile, type FileHandle, link, open, rename, unlink } from 'node:fs/promises';
import { preadFully, pwriteFully } from '../util/positional-io.js';
import { basename, dirname, join } from 'node:path';
import { CdpError, FormatError, InvalidArgumentError } from '../errors.js';
import { DeltaMap, MAX_REGION_COUNT } from '../model/delta-map.js';
import { syncDirectory } from '../util/durable-file.js';

export const DRL_MAGIC = 'CDPS3DRL';
export const DRL_VERSION = 1;
/** Bytes of the header proper; the header block is padded with zeros to DRL_BLOCK. */
export const DRL_HEADER_BYTES = 128;
/** Slots start on multiples of this, so no update ever rewrites a block the header shares. */
export const DRL_BLOCK = 4096;
export const DRL_MAX_VOLUME_ID_BYTES = 64;

const DIGEST_BYTES = 32;
const GENERATION_BYTES = 8;
/** Header bytes the header digest covers. */
const HEADER_DIGESTED = DRL_HEADER_BYTES - DIGEST_BYTES;
const MAX_REGION_SIZE = 2 ** 32 - 1;

export interface DirtyRegionLogOptions {
  /** The repository's volume id (its config's `volumeId`). */
  volumeId: string;
  regionCount: number;
  regionSize: number;
}

export interface CreateDirtyRegionLogOptions extends DirtyRegionLogOptions {
  /** Replace an existing file at the path (default: refuse). */
  overwrite?: boolean;
}

/** What inspectDirtyRegionLog() finds in a file. */
export interface DirtyRegionLogInfo {
  formatVersion: number;
  volumeId: string;
  regionCount: number;
  regionSize: number;
  /** Per slot: its generation, or undefined when the slot is damaged (torn, truncated, altered). */
  generations: [number | undefined, number | undefined];
  /** Per slot: why it is damaged, or undefined when it is valid. */
  slotProblems: [string | undefined, string | undefined];
  /** The slot a reader uses: the valid one with the higher generation; undefined if neither is. */
  activeSlot: 0 | 1 | undefined;
  /** Regions marked in the active slot; undefined if neither slot is valid. */
  dirtyCount: number | undefined;
}

// ---------------------------------------------------------------------------------------------
// Layout

interface Layout {
  bitmapBytes: number;
  /** generation + bitmap + digest. */
  slotBytes: number;
  /** Distance between slot starts: slotBytes rounded up to DRL_BLOCK. */
  stride: number;
  /** Exact file length: header block, slot 0 and its padding, slot 1 (no padding after it). */
  fileBytes: number;
}

function layoutFor(regionCount: number): Layout {
  const bitmapBytes = Math.ceil(regionCount / 8);
  const slotBytes = GENERATION_BYTES + bitmapBytes + DIGEST_BYTES;
  const stride = Math.ceil(slotBytes / DRL_BLOCK) * DRL_BLOCK;
  return { bitmapBytes, slotBytes, stride, fileBytes: DRL_BLOCK + stride + slotBytes };
}

function slotOffset(layout: Layout, slot: 0 | 1): number {
  return DRL_BLOCK + slot * layout.stride;
}

interface Header {
  version: number;
  volumeId: string;
  regionCount: number;
  regionSize: number;
  /** The DRL_HEADER_BYTES bytes as stored (every slot digest covers them). */
  bytes: Buffer;
}

function encodeHeader(options: DirtyRegionLogOptions): Buffer {
  const header = Buffer.alloc(DRL_HEADER_BYTES);
  const id = Buffer.from(options.volumeId, 'utf8');
  header.write(DRL_MAGIC, 0, 'latin1');
  header.writeUInt16LE(DRL_VERSION, 8);
  header.writeUInt16LE(id.length, 10);
  header.writeUInt32LE(options.regionSize, 12);
  header.writeBigUInt64LE(BigInt(options.regionCount), 16);
  id.copy(header, 24);
  // bytes 88..96 reserved, zero
  createHash('sha256').update(header.subarray(0, HEADER_DIGESTED)).digest().copy(header, HEADER_DIGESTED);
  return header;
}

function slotDigest(header: Buffer, slotBody: Uint8Array): Buffer {
  return createHash('sha256').update(header).update(slotBody).digest();
}

/** Fills `out` (layout.slotBytes) with one slot: generation, bitmap, digest. */
function encodeSlot(out: Buffer, header: Buffer, layout: Layout, generation: number, bitmap: Uint8Array): void {
  out.writeBigUInt64LE(BigInt(generation), 0);
  out.set(bitmap, GENERATION_BYTES);
  const bodyEnd = GENERATION_BYTES + layout.bitmapBytes;
  slotDigest(header, out.subarray(0, bodyEnd)).copy(out, bodyEnd);
}

const what = (path: string): string => `dirty region log ${path}`;

/** Validates the header block. The file may be shorter than the layout says (slots are checked later). */
function decodeHeader(path: string, bytes: Buffer, fileBytes: number): Header {
  if (bytes.length < DRL_MAGIC.length || bytes.toString('latin1', 0, DRL_MAGIC.length) !== DRL_MAGIC) {
    throw new FormatError('FORMAT_BAD_MAGIC', what(path), 'wrong magic, this is not a dirty region log: pass the right --drl file');
  }
  if (bytes.length < 10) {
    throw new FormatError('FORMAT_BAD_LENGTH', what(path), `${fileBytes} bytes is too short for the header: delete it and run a full scan`);
  }
  const version = bytes.readUInt16LE(8);
  if (version !== DRL_VERSION) {
    throw new FormatError(
      'FORMAT_UNSUPPORTED_VERSION',
      what(path),
      `format version ${version} is not supported (this cdp-s3 reads version ${DRL_VERSION}): use the cdp-s3 that wrote it`,
    );
  }
  if (bytes.length < DRL_HEADER_BYTES) {
    throw new FormatError('FORMAT_BAD_LENGTH', what(path), `${fileBytes} bytes is too short for the header: delete it and run a full scan`);
  }
  const header = Buffer.from(bytes.subarray(0, DRL_HEADER_BYTES));
  const digest = createHash('sha256').update(header.subarray(0, HEADER_DIGESTED)).digest();
  if (!digest.equals(header.subarray(HEADER_DIGESTED))) {
    throw new FormatError('FORMAT_CORRUPT', what(path), 'the header is damaged (digest mismatch): delete it and run a full scan');
  }
  const idLength = header.readUInt16LE(10);
  const regionSize = header.readUInt32LE(12);
  const regionCount = header.readBigUInt64LE(16);
  const idBytes = header.subarray(24, 24 + DRL_MAX_VOLUME_ID_BYTES);
  const problem =
    idLength < 1 || idLength > DRL_MAX_VOLUME_ID_BYTES
      ? `volume id length ${idLength} is out of range`
      : idBytes.subarray(idLength).some((b) => b !== 0) || header.subarray(88, HEADER_DIGESTED).some((b) => b !== 0)
        ? 'reserved header bytes are not zero'
        : regionSize === 0
          ? 'region size is 0'
          : regionCount > BigInt(MAX_REGION_COUNT)
            ? `region count ${regionCount} is out of range`
            : undefined;
  if (problem !== undefined) throw new FormatError('FORMAT_CORRUPT', what(path), `${problem}: delete it and run a full scan`);
  return { version, volumeId: idBytes.toString('utf8', 0, idLength), regionCount: Number(regionCount), regionSize, bytes: header };
}

type SlotState = { generation: number; bitmap: Buffer; problem?: undefined } | { generation?: undefined; bitmap?: undefined; problem: string };

function decodeSlot(header: Header, layout: Layout, bytes: Buffer): SlotState {
  if (bytes.length < layout.slotBytes) return { problem: 'truncated' };
  const bodyEnd = GENERATION_BYTES + layout.bitmapBytes;
  if (!slotDigest(header.bytes, bytes.subarray(0, bodyEnd)).equals(bytes.subarray(bodyEnd, layout.slotBytes))) {
    return { problem: 'digest mismatch' };
  }
  const generation = bytes.readBigUInt64LE(0);
  if (generation > BigInt(Number.MAX_SAFE_INTEGER)) return { problem: `generation ${generation} out of range` };
  const spare = layout.bitmapBytes * 8 - header.regionCount;
  if (spare > 0 && bytes[bodyEnd - 1]! >> (8 - spare) !== 0) return { problem: 'bits set past the last region' };
  return { generation: Number(generation), bitmap: bytes.subarray(GENERATION_BYTES, bodyEnd) };
}

interface ReadLog {
  header: Header;
  layout: Layout;
  slots: [SlotState, SlotState];
  active: 0 | 1 | undefined;
}

async function readAt(handle: FileHandle, length: number, position: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  return buffer.subarray(0, await preadFully(handle.fd, buffer, position));
}

function writeAt(handle: FileHandle, bytes: Uint8Array, position: number): Promise<void> {
  return pwriteFully(handle.fd, bytes, position);
}

/** Reads and checks the header, then both slots. Only a damaged header throws. */
async function readLog(path: string, handle: FileHandle, expected?: DirtyRegionLogOptions): Promise<ReadLog> {
  const fileBytes = (await handle.stat()).size;
  const header = decodeHeader(path, await readAt(handle, DRL_HEADER_BYTES, 0), fileBytes);
  if (expected !== undefined) checkBelongs(path, header, expected);
  const layout = layoutFor(header.regionCount);
  if (fileBytes > layout.fileBytes) {
    throw new FormatError(
      'FORMAT_TRAILING_DATA',
      what(path),
      `${fileBytes - layout.fileBytes} bytes after the last slot (expected ${layout.fileBytes} bytes): delete it and run a full scan`,
    );
  }
  const slots: [SlotState, SlotState] = [
    decodeSlot(header, layout, await readAt(handle, layout.slotBytes, slotOffset(layout, 0))),
    decodeSlot(header, layout, await readAt(handle, layout.slotBytes, slotOffset(layout, 1))),
  ];
  const [a, b] = slots;
  let active: 0 | 1 | undefined;
  if (a.generation !== undefined && b.generation !== undefined) {
    if (a.generation === b.generation && !a.bitmap.equals(b.bitmap)) {
      throw new FormatError('FORMAT_CORRUPT', what(path), `both slots claim generation ${a.generation} with different contents: delete it and run a full scan`);
    }
    active = b.generation > a.generation ? 1 : 0;
  } else if (a.generation !== undefined) {
    active = 0;
  } else if (b.generation !== undefined) {
    active = 1;
  }
  return { header, layout, slots, active };
}

function checkBelongs(path: string, header: Header, expected: DirtyRegionLogOptions): void {
  if (header.volumeId !== expected.volumeId) {
    throw new CdpError(
      'VOLUME_MISMATCH',
      `${path} belongs to volume ${header.volumeId}, this repository is ${expected.volumeId}: delete it or pass the right --drl`,
    );
  }
  if (header.regionCount !== expected.regionCount || header.regionSize !== expected.regionSize) {
    throw new CdpError(
      'VOLUME_MISMATCH',
      `${path} covers ${header.regionCount} regions of ${header.regionSize} bytes, the volume has ${expected.regionCount} regions of ${expected.regionSize} bytes: delete it or pass the right --drl`,
    );
  }
}

function checkOptions(options: DirtyRegionLogOptions): void {
  const { volumeId, regionCount, regionSize } = options;
  const idBytes = typeof volumeId === 'string' ? Buffer.byteLength(volumeId, 'utf8') : 0;
  if (idBytes < 1 || idBytes > DRL_MAX_VOLUME_ID_BYTES || volumeId.includes('\0')) {
    throw new InvalidArgumentError(`a dirty region log's volume id must be 1 to ${DRL_MAX_VOLUME_ID_BYTES} bytes of UTF-8 without NUL, got ${JSON.stringify(volumeId)}`);
  }
  if (!Number.isInteger(regionCount) || regionCount < 0 || regionCount > MAX_REGION_COUNT) {
    throw new InvalidArgumentError(`region count must be an integer from 0 to ${MAX_REGION_COUNT}, got ${regionCount}`);
  }
  if (!Number.isInteger(regionSize) || regionSize < 1 || regionSize > MAX_REGION_SIZE) {
    throw new InvalidArgumentError(`region size must be an integer from 1 to ${MAX_REGION_SIZE}, got ${regionSize}`);
  }
}

function ioProblem(error: unknown): string {
  const code = (error as NodeJS.ErrnoException).code;
  switch (code) {
    case 'ENOENT':
      return 'it does not exist; check the --drl path';
    case 'EEXIST':
      return 'it already exists; open it instead, or delete it to start an empty log';
    case 'EACCES':
    case 'EPERM':
    case 'EROFS':
      return `permission denied (${code}); run with the needed permissions`;
    case 'EISDIR':
      return 'it is a directory; give a file path';
    case 'ENOSPC':
      return 'the disk is full; free space';
    default:
      return `${code ?? 'error'} (${(error as Error).message})`;
  }
}

function ioError(path: string, action: string, error: unknown): CdpError {
  if (error instanceof CdpError) return error;
  return new CdpError('SOURCE', `cannot ${action} dirty region log ${path}: ${ioProblem(error)}`, { cause: error });
}

const isMissing = (error: unknown): boolean =>
  error instanceof CdpError && (error.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';

// ---------------------------------------------------------------------------------------------
// The log

interface PendingOp {
  kind: 'mark' | 'clear';
  /** Either a snapshot of the caller's map or a list of region indices (validated). */
  map: DeltaMap | undefined;
  list: number[] | undefined;
  resolve: () => void;
  reject: (error: unknown) => void;
}

export class DirtyRegionLog {
  readonly path: string;
  readonly volumeId: string;
  readonly regionCount: number;
  readonly regionSize: number;
  /** True when openOrCreate()/create() made a new, empty log (no earlier writes are known). */
  readonly created: boolean;

  private readonly handle: FileHandle;
  private readonly header: Buffer;
  private readonly layout: Layout;
  /** The durable state: what the active slot holds. */
  private current: DeltaMap;
  private generation: number;
  private activeSlot: 0 | 1;
  /** Reused for every slot write (writes are serialized). */
  private readonly slotBuffer: Buffer;
  private pending: PendingOp[] = [];
  /** Every update runs on this chain, one after another; it never rejects. */
  private chain: Promise<void> = Promise.resolve();
  private closed = false;
  private closing: Promise<void> | undefined;

  private constructor(path: string, handle: FileHandle, log: ReadLog, active: 0 | 1, created: boolean) {
    const slot = log.slots[active];
    this.path = path;
    this.handle = handle;
    this.header = log.header.bytes;
    this.layout = log.layout;
    this.volumeId = log.header.volumeId;
    this.regionCount = log.header.regionCount;
    this.regionSize = log.header.regionSize;
    this.created = created;
    this.current = DeltaMap.fromBitmap(this.regionCount, slot.bitmap!);
    this.generation = slot.generation!;
    this.activeSlot = active;
    this.slotBuffer = Buffer.alloc(log.layout.slotBytes);
  }

  /** Creates an empty log. Refuses an existing file unless `overwrite`. The file appears whole or not at all. */
  static async create(path: string, options: CreateDirtyRegionLogOptions): Promise<DirtyRegionLog> {
    checkOptions(options);
    const header = encodeHeader(options);
    const layout = layoutFor(options.regionCount);
    const file = Buffer.alloc(layout.fileBytes);
    header.copy(file, 0);
    const empty = new Uint8Array(layout.bitmapBytes);
    // Slot 0 is generation 1; slot 1 holds the same empty state as generation 0.
    encodeSlot(file.subarray(slotOffset(layout, 0)), header, layout, 1, empty);
    encodeSlot(file.subarray(slotOffset(layout, 1)), header, layout, 0, empty);

    const temp = join(dirname(path), `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
    try {
      const handle = await open(temp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
      try {
        await writeAt(handle, file, 0);
        await handle.sync();
      } finally {
        await handle.close();
      }
      if (options.overwrite === true) {
        await rename(temp, path);
      } else {
        await publishExclusive(temp, path);
      }
      await syncDirectory(dirname(path));
    } catch (error) {
      await unlink(temp).catch(() => undefined);
      throw ioError(path, 'create', error);
    }
    return DirtyRegionLog.openFile(path, options, true);
  }

  /** Opens an existing log, refusing one that is damaged or belongs to another volume or geometry. */
  static async open(path: string, options: DirtyRegionLogOptions): Promise<DirtyRegionLog> {
    checkOptions(options);
    return DirtyRegionLog.openFile(path, options, false);
  }

  /** Opens the log at `path`, or creates an empty one if there is no file there. */
  static async openOrCreate(path: string, options: DirtyRegionLogOptions): Promise<DirtyRegionLog> {
    checkOptions(options);
    try {
      return await DirtyRegionLog.openFile(path, options, false);
    } catch (error) {
      if (!isMissing(error)) throw error;
    }
    try {
      return await DirtyRegionLog.create(path, { ...options, overwrite: false });
    } catch (error) {
      // Another process created it in between: open theirs.
      if (error instanceof CdpError && (error.cause as NodeJS.ErrnoException | undefined)?.code === 'EEXIST') {
        return DirtyRegionLog.openFile(path, options, false);
      }
      throw error;
    }
  }

  private static async openFile(path: string, options: DirtyRegionLogOptions, created: boolean): Promise<DirtyRegionLog> {
    let handle: FileHandle;
    try {
      handle = await open(path, constants.O_RDWR);
    } catch (error) {
      throw ioError(path, 'open', error);
    }
    try {
      const st = await handle.stat();
      if (!st.isFile()) throw new CdpError('SOURCE', `dirty region log ${path} is not a regular file: give a file path`);
      const log = await readLog(path, handle, options);
      if (log.active === undefined) {
        throw new FormatError(
          'FORMAT_CORRUPT',
          what(path),
          `both slots are damaged (slot 0: ${log.slots[0].problem}, slot 1: ${log.slots[1].problem}), so the dirty regions are unknown: delete it and run a full scan`,
        );
      }
      return new DirtyRegionLog(path, handle, log, log.active, created);
    } catch (error) {
      await handle.close();
      throw ioError(path, 'read', error);
    }
  }

  /** A copy of the durable dirty set (updates still in flight are not in it). The caller owns it. */
  dirty(): DeltaMap {
    this.assertOpen();
    return this.current.clone();
  }

  has(region: number): boolean {
    this.assertOpen();
    return this.current.has(region);
  }

  /** Regions in the durable dirty set. */
  count(): number {
    this.assertOpen();
    return this.current.count();
  }

  /**
   * Adds regions and resolves once they are durable (written and synced). Resolves without
   * writing when all of them are already marked. Updates apply in call order.
   */
  mark(regions: DeltaMap | Iterable<number>): Promise<void> {
    return this.enqueue('mark', regions);
  }

  /** Removes regions (their delta committed) and resolves once that is durable. */
  clear(regions: DeltaMap | Iterable<number>): Promise<void> {
    return this.enqueue('clear', regions);
  }

  /** Waits for queued updates, then closes the file. Later calls are refused. */
  close(): Promise<void> {
    this.closed = true;
    this.closing ??= (async () => {
      await this.chain;
      this.current.dispose();
      try {
        await this.handle.close();
      } catch (error) {
        throw ioError(this.path, 'close', error);
      }
    })();
    return this.closing;
  }

  private assertOpen(): void {
    if (this.closed) throw new InvalidArgumentError(`dirty region log ${this.path} used after close()`);
  }

  private enqueue(kind: 'mark' | 'clear', regions: DeltaMap | Iterable<number>): Promise<void> {
    let map: DeltaMap | undefined;
    let list: number[] | undefined;
    try {
      this.assertOpen();
      // Snapshot the argument now, so later changes by the caller do not leak into the update.
      if (regions instanceof DeltaMap) {
        if (regions.regionCount !== this.regionCount) {
          throw new InvalidArgumentError(`${kind}: the map covers ${regions.regionCount} regions, the log ${this.regionCount}`);
        }
        map = regions.clone();
      } else {
        list = [];
        for (const region of regions) {
          if (!Number.isInteger(region) || region < 0 || region >= this.regionCount) {
            throw new InvalidArgumentError(`${kind}: region ${region} is outside the volume's ${this.regionCount} regions`);
          }
          list.push(region);
        }
      }
    } catch (error) {
      return Promise.reject(error);
    }
    const done = new Promise<void>((resolve, reject) => this.pending.push({ kind, map, list, resolve, reject }));
    // Each link drains everything queued so far (one write for the lot); later links find nothing.
    this.chain = this.chain.then(() => this.flush());
    return done;
  }

  /** Applies every queued update in order and persists the result with one slot write. Never rejects. */
  private async flush(): Promise<void> {
    const batch = this.pending.splice(0);
    if (batch.length === 0) return;
    let next: DeltaMap | undefined;
    try {
      if (batch.every((op) => op.kind === 'mark' && op.list !== undefined && op.list.every((r) => this.current.has(r)))) {
        for (const op of batch) op.resolve();
        return;
      }
      next = this.current.clone();
      for (const op of batch) {
        if (op.map !== undefined) {
          if (op.kind === 'mark') next.union(op.map);
          else next.subtract(op.map);
        } else if (op.kind === 'mark') {
          for (const r of op.list!) next.set(r);
        } else {
          for (const r of op.list!) next.clear(r);
        }
      }
      if (!next.equals(this.current)) {
        const slot = this.activeSlot === 0 ? 1 : 0;
        const generation = this.generation + 1;
        if (generation > Number.MAX_SAFE_INTEGER) {
          throw new CdpError('SOURCE', `dirty region log ${this.path} ran out of generations: delete it and run a full scan`);
        }
        encodeSlot(this.slotBuffer, this.header, this.layout, generation, next.toBitmap());
        try {
          await writeAt(this.handle, this.slotBuffer, slotOffset(this.layout, slot));
          await this.handle.datasync();
        } catch (error) {
          // The active slot is untouched; the next update rewrites the inactive slot whole.
          throw ioError(this.path, 'update', error);
        }
        this.current.dispose();
        this.current = next;
        next = undefined;
        this.generation = generation;
        this.activeSlot = slot;
      }
      for (const op of batch) op.resolve();
    } catch (error) {
      for (const op of batch) op.reject(error);
    } finally {
      next?.dispose();
      for (const op of batch) op.map?.dispose();
    }
  }
}

/** Gives `temp` the name `path` only if nothing is there yet, then removes the temporary name. */
async function publishExclusive(temp: string, path: string): Promise<void> {
  try {
    await link(temp, path);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS' && code !== 'EOPNOTSUPP') throw error;
    // The file system has no hard links: an exclusive copy (not atomic, but never clobbers).
    await copyFile(temp, path, constants.COPYFILE_EXCL);
    const handle = await open(path, constants.O_RDWR);
    try {
      await handle.sync();
    } finally {
      await handle.close();
    }
  }
  await unlink(temp);
}

/**
 * A debugging view of a log file: its header and both slots' generations. Throws only when the
 * file cannot be read or its header is damaged; damaged slots are reported, not refused.
 */
export async function inspectDirtyRegionLog(path: string): Promise<DirtyRegionLogInfo> {
  let handle: FileHandle;
  try {
    handle = await open(path, constants.O_RDONLY);
  } catch (error) {
    throw ioError(path, 'open', error);
  }
  try {
    const log = await readLog(path, handle);
    const [a, b] = log.slots;
    const active = log.active === undefined ? undefined : log.slots[log.active];
    let dirtyCount: number | undefined;
    if (active?.bitmap !== undefined) {
      const map = DeltaMap.fromBitmap(log.header.regionCount, active.bitmap);
      dirtyCount = map.count();
      map.dispose();
    }
    return {
      formatVersion: log.header.version,
      volumeId: log.header.volumeId,
      regionCount: log.header.regionCount,
      regionSize: log.header.regionSize,
      generations: [a.generation, b.generation],
      slotProblems: [a.problem, b.problem],
      activeSlot: log.active,
      dirtyCount,
    };
  } catch (error) {
    throw ioError(path, 'read', error);
  } finally {
    await handle.close();
  }
}
