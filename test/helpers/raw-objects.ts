// Direct access to a repository's stored objects, bypassing cdp-s3, to damage them on purpose:
// files under the repository directory for the local store, plain SDK calls for S3. Also byte
// surgery on envelopes (flip, truncate, change the format version with a recomputed trailer)
// and a snapshot of everything stored, to assert that a refused command wrote nothing.

import { createHash } from 'node:crypto';
import { readdir, readFile, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DeleteObjectCommand, DeleteObjectsCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';

export interface RawObjects {
  /** Every key (for fs: every file, temp files included), ascending. */
  keys(prefix?: string): Promise<string[]>;
  get(key: string): Promise<Buffer>;
  put(key: string, bytes: Uint8Array): Promise<void>;
  delete(key: string): Promise<void>;
}

export class FsRawObjects implements RawObjects {
  constructor(readonly root: string) {}

  async keys(prefix = ''): Promise<string[]> {
    const out: string[] = [];
    const walk = async (dir: string, rel: string): Promise<void> => {
      let entries;
      try {
        entries = await readdir(dir, { withFileTypes: true });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
        throw error;
      }
      for (const entry of entries) {
        const key = rel + entry.name;
        if (entry.isDirectory()) await walk(join(dir, entry.name), key + '/');
        else out.push(key);
      }
    };
    await walk(this.root, '');
    return out.filter((k) => k.startsWith(prefix)).sort();
  }

  get(key: string): Promise<Buffer> {
    return readFile(join(this.root, key));
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    await writeFile(join(this.root, key), bytes);
  }

  async delete(key: string): Promise<void> {
    await unlink(join(this.root, key));
  }
}
export class S3RawObjects implements RawObjects {
  private readonly client: S3Client;

  constructor(
    readonly bucket: string,
    readonly prefix: string,
    endpoint: string,
    /** Default: s3rver's. */
    credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
  ) {
    this.client = new S3Client({
      endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials,
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  private full(key: string): string {
    return this.prefix === '' ? key : `${this.prefix}/${key}`;
  }

  async keys(prefix = ''): Promise<string[]> {
    const out: string[] = [];
    const base = this.prefix === '' ? '' : `${this.prefix}/`;
    let token: string | undefined;
    do {
      const page = await this.client.send(
        new ListObjectsV2Command({ Bucket: this.bucket, Prefix: base + prefix, ...(token !== undefined ? { ContinuationToken: token } : {}) }),
      );
      for (const object of page.Contents ?? []) if (object.Key !== undefined) out.push(object.Key.slice(base.length));
      token = page.IsTruncated === true ? page.NextContinuationToken : undefined;
    } while (token !== undefined);
    return out.sort();
  }

  async get(key: string): Promise<Buffer> {
    const output = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.full(key) }));
    return Buffer.from(await output.Body!.transformToByteArray());
  }

  async put(key: string, bytes: Uint8Array): Promise<void> {
    await this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.full(key), Body: bytes, ContentLength: bytes.length }));
  }

  async delete(key: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.full(key) }));
  }

  destroy(): void {
    this.client.destroy();
  }
}

/** Deletes every object whose key starts with `prefix` in `bucket`, a page (up to 1000) at a time. */
export async function deleteS3Prefix(client: S3Client, bucket: string, prefix: string): Promise<void> {
  for (;;) {
    const page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, MaxKeys: 1000 }));
    const objects = (page.Contents ?? []).flatMap((o) => (o.Key === undefined ? [] : [{ Key: o.Key }]));
    if (objects.length === 0) return;
    await client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: objects } }));
  }
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

/** Every stored key with the SHA-256 of its bytes. */
export async function snapshot(raw: RawObjects): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const key of await raw.keys()) out[key] = sha256(await raw.get(key));
  return out;
}

// Envelope layout (src/repo/envelope.ts): magic 8 bytes, u16 LE version at 8, msgpack body, SHA-256 of all before it.
const TRAILER = 32;

/** A copy with one byte of the envelope body inverted (the trailer no longer matches). */
export function flipBodyByte(bytes: Uint8Array): Buffer {
  const out = Buffer.from(bytes);
  const at = 10 + Math.floor((out.length - 10 - TRAILER) / 2);
  out[at] = out[at]! ^ 0xff;
  return out;
}

/** A copy with the format version set to `version` and the SHA-256 trailer recomputed, so only the version is wrong. */
export function withVersion(bytes: Uint8Array, version: number, recomputeTrailer = true): Buffer {
  const out = Buffer.from(bytes);
  out.writeUInt16LE(version, 8);
  if (recomputeTrailer) {
    const end = out.length - TRAILER;
    createHash('sha256').update(out.subarray(0, end)).digest().copy(out, end);
  }
  return out;
}

/** The version field of an envelope or pack header. */
export function versionOf(bytes: Uint8Array): number {
  return Buffer.from(bytes).readUInt16LE(8);
}
