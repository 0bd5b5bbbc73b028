// The msgpack encoding of a DeltaMap (docs/FORMAT.md, "Delta map"):
//
//   [ "cdp-s3/delta-map", 1, regionCount, encoding, payload ]
//
// encoding 0: payload is the bitmap, ceil(regionCount / 8) bytes, bits past regionCount zero.
// encoding 1: payload is the set regions as ascending u32 little-endian values.
// The encoder picks whichever is smaller. The decoder refuses anything else with a FormatError
// whose code says what was wrong.

import { pack, unpack } from 'msgpackr';
import { FormatError } from '../errors.js';
import type { Kernels } from '../kernels/index.js';
import { DeltaMap, MAX_REGION_COUNT } from './delta-map.js';

export const DELTA_MAP_MAGIC = 'cdp-s3/delta-map';
export const DELTA_MAP_VERSION = 1;

export const DeltaMapEncoding = { Bitmap: 0, Indices: 1 } as const;
export type DeltaMapEncoding = (typeof DeltaMapEncoding)[keyof typeof DeltaMapEncoding];

const WHAT = 'delta map';

export function encodeDeltaMap(map: DeltaMap): Uint8Array {
  const count = map.count();
  let encoding: DeltaMapEncoding;
  let payload: Uint8Array;
  if (count * 4 < map.byteLength) {
    encoding = DeltaMapEncoding.Indices;
    const indices = new Uint32Array(count);
    let i = 0;
    for (const region of map.regions()) indices[i++] = region;
    payload = littleEndianBytes(indices);
  } else {
    encoding = DeltaMapEncoding.Bitmap;
    payload = map.toBitmap();
  }
  return pack([DELTA_MAP_MAGIC, DELTA_MAP_VERSION, map.regionCount, encoding, payload]);
}

export function decodeDeltaMap(bytes: Uint8Array, kernels?: Kernels): DeltaMap {
  const value = unpackOne(bytes);
  if (!Array.isArray(value) || value.length === 0) {
    throw new FormatError('FORMAT_BAD_MAGIC', WHAT, 'not a delta map (no magic)');
  }
  const [magic, version, regionCount, encoding, payload] = value as unknown[];
  if (magic !== DELTA_MAP_MAGIC) {
    throw new FormatError('FORMAT_BAD_MAGIC', WHAT, `wrong magic ${JSON.stringify(magic)}, expected "${DELTA_MAP_MAGIC}"`);
  }
  if (version !== DELTA_MAP_VERSION) {
    throw new FormatError(
      'FORMAT_UNSUPPORTED_VERSION',
      WHAT,
      `format version ${String(version)} is not supported (this cdp-s3 reads version ${DELTA_MAP_VERSION}); upgrade cdp-s3`,
    );
  }
  if (value.length !== 5) throw new FormatError('FORMAT_CORRUPT', WHAT, `expected 5 fields, found ${value.length}`);
  if (typeof regionCount !== 'number' || !Number.isInteger(regionCount) || regionCount < 0 || regionCount > MAX_REGION_COUNT) {
    throw new FormatError('FORMAT_CORRUPT', WHAT, `region count ${String(regionCount)} is not an integer from 0 to ${MAX_REGION_COUNT}`);
  }
  if (!(payload instanceof Uint8Array)) throw new FormatError('FORMAT_CORRUPT', WHAT, 'payload is not binary');

  if (encoding === DeltaMapEncoding.Bitmap) {
    const expected = Math.ceil(regionCount / 8);
    if (payload.length !== expected) {
      throw new FormatError('FORMAT_BAD_LENGTH', WHAT, `bitmap of ${regionCount} regions must be ${expected} bytes, is ${payload.length}`);
    }
    const spare = expected * 8 - regionCount;
    if (spare > 0 && payload[expected - 1]! >> (8 - spare) !== 0) {
      throw new FormatError('FORMAT_CORRUPT', WHAT, `bitmap has bits set past region ${regionCount - 1}`);
    }
    return DeltaMap.fromBitmap(regionCount, payload, kernels);
  }
  if (encoding === DeltaMapEncoding.Indices) {
    if (payload.length % 4 !== 0) {
      throw new FormatError('FORMAT_BAD_LENGTH', WHAT, `index list of ${payload.length} bytes is not a whole number of u32 values`);
    }
    const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
    const map = new DeltaMap(regionCount, kernels);
    let previous = -1;
    for (let at = 0; at < payload.length; at += 4) {
      const region = view.getUint32(at, true);
      if (region <= previous || region >= regionCount) {
        map.dispose();
        throw new FormatError('FORMAT_CORRUPT', WHAT, `region ${region} is out of order or outside ${regionCount} regions`);
      }
      map.set(region);
      previous = region;
    }
    return map;
  }
  throw new FormatError('FORMAT_CORRUPT', WHAT, `unknown payload encoding ${String(encoding)}`);
}

/** Decodes exactly one msgpack value, telling truncation and trailing bytes apart. */
function unpackOne(bytes: Uint8Array): unknown {
  try {
    return unpack(bytes);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    if (message.includes('end of buffer not reached')) {
      throw new FormatError('FORMAT_TRAILING_DATA', WHAT, 'unexpected bytes after the encoded map', { cause: error });
    }
    if ((error as { incomplete?: boolean }).incomplete === true) {
      throw new FormatError('FORMAT_BAD_LENGTH', WHAT, 'truncated: the data ends inside the encoded map', { cause: error });
    }
    throw new FormatError('FORMAT_CORRUPT', WHAT, `not valid msgpack (${message})`, { cause: error });
  }
}

function littleEndianBytes(values: Uint32Array): Uint8Array {
  const bytes = new Uint8Array(values.length * 4);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < values.length; i++) view.setUint32(i * 4, values[i]!, true);
  return bytes;
}
