// Packs: many regions' bytes in one data object, so a delta costs O(1) + bytes / pack size
// requests instead of one request per region.
//
//   offset 0   8 bytes  magic "CDPS3PCK"
//   offset 8   2 bytes  format version, u16 little-endian (1)
//   offset 10  6 bytes  reserved, zero
//   offset 16  ...      region bytes, back to back; deltas record each region's offset
//
// A pack carries no index of its own: the delta that references it is the index, and each
// region's SHA-256 there verifies its bytes.

export const PACK_MAGIC = 'CDPS3PCK';
export const PACK_VERSION = 1;
export const PACK_HEADER_BYTES = 16;

export class PackBuilder {
  readonly key: string;
  private readonly buffer: Buffer;
  private used = PACK_HEADER_BYTES;
  regions = 0;

  /**
   * capacity: the most bytes of region data the pack may hold. `reuse` is an earlier pack's
   * buffer (see buffer()) to fill again instead of allocating; it must be large enough.
   */
  constructor(key: string, capacity: number, reuse?: Buffer) {
    this.key = key;
    const size = PACK_HEADER_BYTES + capacity;
    this.buffer = reuse !== undefined && reuse.length >= size ? reuse.subarray(0, size) : Buffer.allocUnsafe(size);
    this.buffer.write(PACK_MAGIC, 0, 'latin1');
    this.buffer.writeUInt16LE(PACK_VERSION, 8);
    this.buffer.fill(0, 10, PACK_HEADER_BYTES);
  }

  /** Bytes of region data so far. */
  get dataBytes(): number {
    return this.used - PACK_HEADER_BYTES;
  }

  hasRoomFor(length: number): boolean {
    return this.used + length <= this.buffer.length;
  }

  /** Copies the region in and returns its offset within the pack. */
  append(bytes: Uint8Array): number {
    const offset = this.used;
    this.buffer.set(bytes, offset);
    this.used += bytes.length;
    this.regions++;
    return offset;
  }

  /** The whole buffer, to pass as `reuse` to a later pack once this one is stored. */
  get backing(): Buffer {
    return this.buffer;
  }

  /** The finished object's bytes. */
  bytes(): Uint8Array {
    return this.buffer.subarray(0, this.used);
  }
}
