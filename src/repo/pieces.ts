// Pieces: how a region or a patch is stored in a pack (docs/FORMAT.md, "Pieces"). Each piece is
// one frame, so a reader can fetch any piece (or a run of neighbouring ones) with a ranged GET:
//
//   plain repository:      [codec u8][payload]
//   encrypted repository:  nonce (12) || AES-256-GCM([codec u8][payload]) || tag (16)
//
// codec 0: the payload is the piece's bytes; codec 1: a zstd frame of them. A writer compresses
// only when that saves space, and skips data a sample says will not compress.

import { createRequire } from 'node:module';
import { FormatError } from '../errors.js';
import type { Sealer } from './crypto.js';

export const CODEC_RAW = 0;
export const CODEC_ZSTD = 1;
// @mongodb-js/zstd 1.2.2's index.js drops the level argument (every call is level 3): its napi
// bindings take it. Pinned to that exact version for this reason (package.json).
const zstd = createRequire(import.meta.url)('@mongodb-js/zstd/bindings.js') as {
  compress(data: Buffer, level: number): Promise<Buffer>;
  decompress(data: Buffer): Promise<Buffer>;
};
const compress = zstd.compress;
const decompress = zstd.decompress;

/** Bytes a frame adds to its payload in a plain repository. */
export const FRAME_HEADER_BYTES = 1;

export const COMPRESSION_LEVELS = ['off', 'fast', 'max'] as const;
export type Compression = (typeof COMPRESSION_LEVELS)[number];

/** zstd levels: `fast` keeps up with SHA-256 on one core; `max` trades speed for size. */
const ZSTD_LEVEL: Record<Exclude<Compression, 'off'>, number> = { fast: 1, max: 9 };

/**
 * A piece is compressed only when a sample of it (three 4 KiB blocks: its start, middle and end)
 * compresses to at most this share of its size: random or already compressed data (much of a
 * disk that is not text) costs one small compression, not a whole one. One block alone misjudges
 * a region that is half text, half random.
 */
const SAMPLE_BLOCK = 4096;
const SAMPLE_RATIO = 0.9;
/** Pieces smaller than this are not worth a sample: compressed whole. */
const SMALL_PIECE = 8 * SAMPLE_BLOCK;

function sampleOf(plain: Uint8Array): Buffer {
  const sample = Buffer.allocUnsafe(3 * SAMPLE_BLOCK);
  for (const [i, at] of [0, (plain.length - SAMPLE_BLOCK) >> 1, plain.length - SAMPLE_BLOCK].entries()) sample.set(plain.subarray(at, at + SAMPLE_BLOCK), i * SAMPLE_BLOCK);
  return sample;
}

/** Associated data of a sealed piece: its kind and the repository (a piece of another volume is refused). */
function pieceAad(volumeId: string): Uint8Array {
  return Buffer.from(`cdp-s3 piece ${volumeId}`, 'utf8');
}

/** Encodes pieces for one repository (its sealer, if encrypted) and decodes them back. */
export class PieceCodec {
  private readonly aad: Uint8Array;

  constructor(
    volumeId: string,
    /** Seals frames in an encrypted repository; undefined in a plain one. */
    readonly sealer: Sealer | undefined,
  ) {
    this.aad = pieceAad(volumeId);
  }

  /** Bytes a stored piece takes beyond its (possibly compressed) payload. */
  get overhead(): number {
    return FRAME_HEADER_BYTES + (this.sealer?.overhead ?? 0);
  }

  /** The stored frame of `plain`, compressed at `compression` when that saves space. */
  async encode(plain: Uint8Array, compression: Compression): Promise<Uint8Array> {
    let codec = CODEC_RAW;
    let payload = plain;
    if (compression !== 'off' && plain.length > 64) {
      const level = ZSTD_LEVEL[compression];
      const worth = plain.length < SMALL_PIECE || (await compress(sampleOf(plain), level)).length <= 3 * SAMPLE_BLOCK * SAMPLE_RATIO;
      if (worth) {
        const packed = await compress(Buffer.from(plain.buffer, plain.byteOffset, plain.length), level);
        if (packed.length < plain.length) {
          codec = CODEC_ZSTD;
          payload = packed;
        }
      }
    }
    const frame = new Uint8Array(FRAME_HEADER_BYTES + payload.length);
    frame[0] = codec;
    frame.set(payload, FRAME_HEADER_BYTES);
    return this.sealer === undefined ? frame : this.sealer.seal(frame, this.aad);
  }

  /**
   * The piece's bytes from its stored frame. `what` names it in errors; a frame that does not
   * open (tampered, another repository's, truncated) or decode is FORMAT_CORRUPT, like any
   * damaged stored bytes. `limit` bounds what a decompression may produce.
   */
  async decode(stored: Uint8Array, what: string, limit: number): Promise<Uint8Array> {
    const frame = this.sealer === undefined ? stored : this.sealer.open(stored, this.aad, what);
    if (frame.length < FRAME_HEADER_BYTES) throw new FormatError('FORMAT_CORRUPT', what, 'is an empty piece');
    const payload = frame.subarray(FRAME_HEADER_BYTES);
    if (frame[0] === CODEC_RAW) return payload;
    if (frame[0] !== CODEC_ZSTD) throw new FormatError('FORMAT_CORRUPT', what, `has an unknown codec ${frame[0]}`);
    let plain: Buffer;
    try {
      plain = await decompress(Buffer.from(payload.buffer, payload.byteOffset, payload.length));
    } catch (error) {
      throw new FormatError('FORMAT_CORRUPT', what, `does not decompress (${(error as Error).message})`, { cause: error });
    }
    if (plain.length > limit) throw new FormatError('FORMAT_CORRUPT', what, `decompresses to ${plain.length} bytes, more than the ${limit} it may hold`);
    return plain;
  }
}
