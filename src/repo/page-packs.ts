// Page packs (`pages/<seq>-<random>`): the pages (and summary blocks) of large runs, back to back
// after a 16-byte header, so a run of any size costs a few PUTs. A run's root names each blob by
// pack, offset, length and SHA-256; the root is written after its page packs (data first).

import { createHash, randomBytes } from 'node:crypto';
import { type ObjectStore } from '../store/types.js';
import type { Sealer } from './crypto.js';
import { TaskWindow } from '../util/task-window.js';
import { pagePackKey } from './keys.js';
import { type BlobRef, PAGE_PACK_HEADER_BYTES, pagePackHeader } from './run-codec.js';

export const DEFAULT_PAGE_PACK_BYTES = 8 * 1024 * 1024;

/** Associated data of a sealed blob: its kind and the repository. */
function blobAad(volumeId: string): Uint8Array {
  return Buffer.from(`cdp-s3 blob ${volumeId}`, 'utf8');
}

/**
 * Blobs (pages, summary blocks) as stored in page packs: sealed one by one in an encrypted
 * repository (a ranged GET reads one), as they are in a plain one. A root names each stored
 * blob's SHA-256, checked before it is opened.
 */
export class BlobCodec {
  private readonly aad: Uint8Array;

  constructor(
    volumeId: string,
    private readonly sealer: Sealer | undefined,
  ) {
    this.aad = blobAad(volumeId);
  }

  seal(blob: Uint8Array): Uint8Array {
    return this.sealer === undefined ? blob : this.sealer.seal(blob, this.aad);
  }

  open(stored: Uint8Array, what: string): Uint8Array {
    return this.sealer === undefined ? stored : this.sealer.open(stored, this.aad, what);
  }
}

export interface PagePackWriterOptions {
  /** How blobs are sealed; plain without. */
  blobs?: BlobCodec;
  /** A page pack is put once it holds this many bytes. Default 8 MiB. */
  packBytes?: number;
  /** Page packs being uploaded at once. Default 2. */
  inFlight?: number;
  signal?: AbortSignal;
}

/** Appends blobs to page packs of the run `seq` and uploads them (durable by the next store sync). */
export class PagePackWriter {
  private parts: Uint8Array[] = [];
  private used = 0;
  private key: string | undefined;
  private readonly uploads: TaskWindow;
  /** Packs not yet stored: a blob written to one can still be read back from memory. */
  private readonly unstored = new Map<string, Uint8Array[]>();
  bytesWritten = 0;
  packsWritten = 0;

  constructor(
    private readonly store: ObjectStore,
    private readonly seq: number,
    private readonly options: PagePackWriterOptions = {},
  ) {
    this.uploads = new TaskWindow(options.inFlight ?? 2);
  }

  /** Appends a blob and returns where it will be. */
  async add(plain: Uint8Array): Promise<BlobRef> {
    const blob = this.options.blobs?.seal(plain) ?? plain;
    if (this.key !== undefined && this.used + blob.length > (this.options.packBytes ?? DEFAULT_PAGE_PACK_BYTES)) await this.seal();
    if (this.key === undefined) {
      this.key = pagePackKey(this.seq, randomBytes(4).toString('hex'));
      this.parts = [pagePackHeader()];
      this.used = PAGE_PACK_HEADER_BYTES;
      this.unstored.set(this.key, this.parts);
    }
    const ref: BlobRef = { pack: this.key, offset: this.used, length: blob.length, digest: createHash('sha256').update(blob).digest() };
    this.parts.push(blob);
    this.used += blob.length;
    this.bytesWritten += blob.length;
    return ref;
  }

  /** A blob this writer wrote (as stored: sealed), from memory while its pack is not stored yet. */
  readBack(ref: BlobRef): Uint8Array | undefined {
    const parts = this.unstored.get(ref.pack);
    if (parts === undefined) return undefined;
    let at = 0;
    for (const part of parts) {
      if (at === ref.offset) return part;
      at += part.length;
    }
    return undefined;
  }

  /** Uploads the last pack and waits for every upload. */
  async finish(): Promise<void> {
    if (this.key !== undefined) await this.seal();
    await this.uploads.drain();
  }

  private async seal(): Promise<void> {
    const key = this.key!;
    const body = Buffer.concat(this.parts, this.used);
    this.key = undefined;
    await this.uploads.add(async () => {
      await this.store.put(key, body, { signal: this.options.signal, deferSync: true });
      this.unstored.delete(key);
    });
    this.packsWritten++;
  }
}
