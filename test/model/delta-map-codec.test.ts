import { pack } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { CdpError, FormatError } from '../../src/errors.js';
import { DeltaMap } from '../../src/model/delta-map.js';
import { DELTA_MAP_MAGIC, decodeDeltaMap, encodeDeltaMap } from '../../src/model/delta-map-codec.js';

function refusal(bytes: Uint8Array): FormatError {
  try {
    decodeDeltaMap(bytes);
  } catch (error) {
    expect(error).toBeInstanceOf(FormatError);
    expect(error).toBeInstanceOf(CdpError);
    return error as FormatError;
  }
  throw new Error('decode accepted bad input');
}

describe('delta map codec', () => {
  it('round-trips sparse maps (index list) and dense maps (bitmap)', () => {
    for (const [n, regions] of [
      [0, []],
      [1, [0]],
      [13, [0, 5, 12]],
      [100_000, [3, 99_999]],
      [1000, Array.from({ length: 500 }, (_, i) => i * 2)],
    ] as Array<[number, number[]]>) {
      const map = DeltaMap.of(n, regions);
      const decoded = decodeDeltaMap(encodeDeltaMap(map));
      expect(decoded.regionCount).toBe(n);
      expect(decoded.equals(map)).toBe(true);
      expect(Array.from(decoded)).toEqual(regions);
    }
  });

  it('stores a sparse map of a large volume compactly', () => {
    const map = DeltaMap.of(16 * 1024 * 1024, [1, 2, 3]);
    expect(encodeDeltaMap(map).length).toBeLessThan(64);
  });

  it('refuses a wrong magic', () => {
    const error = refusal(pack(['cdp-s3/pit-map', 1, 8, 0, new Uint8Array(1)]));
    expect(error.code).toBe('FORMAT_BAD_MAGIC');
    expect(error.message).toMatch(/wrong magic "cdp-s3\/pit-map"/);
    expect(refusal(pack({ hello: 1 })).code).toBe('FORMAT_BAD_MAGIC');
  });

  it('refuses an unknown format version', () => {
    const error = refusal(pack([DELTA_MAP_MAGIC, 2, 8, 0, new Uint8Array(1)]));
    expect(error.code).toBe('FORMAT_UNSUPPORTED_VERSION');
    expect(error.message).toMatch(/version 2 is not supported/);
  });

  it('refuses a bitmap or index list of the wrong length', () => {
    expect(refusal(pack([DELTA_MAP_MAGIC, 1, 9, 0, new Uint8Array(1)])).code).toBe('FORMAT_BAD_LENGTH');
    expect(refusal(pack([DELTA_MAP_MAGIC, 1, 9, 1, new Uint8Array(3)])).code).toBe('FORMAT_BAD_LENGTH');
  });

  it('refuses truncated data', () => {
    const bytes = encodeDeltaMap(DeltaMap.of(1000, [1, 500, 999]));
    for (const cut of [1, 5, bytes.length - 1]) {
      expect(refusal(bytes.subarray(0, cut)).code).toBe('FORMAT_BAD_LENGTH');
    }
  });

  it('refuses trailing garbage', () => {
    const bytes = encodeDeltaMap(DeltaMap.of(1000, [1, 500, 999]));
    const error = refusal(Buffer.concat([bytes, Buffer.from([0xc0])]));
    expect(error.code).toBe('FORMAT_TRAILING_DATA');
  });

  it('refuses bits past the region count, unordered or out-of-range indices, unknown encodings', () => {
    expect(refusal(pack([DELTA_MAP_MAGIC, 1, 9, 0, new Uint8Array([0, 2])])).message).toMatch(/past region 8/);
    const indices = (values: number[]): Uint8Array => new Uint8Array(new Uint32Array(values).buffer);
    expect(refusal(pack([DELTA_MAP_MAGIC, 1, 100, 1, indices([5, 3])])).code).toBe('FORMAT_CORRUPT');
    expect(refusal(pack([DELTA_MAP_MAGIC, 1, 100, 1, indices([5, 5])])).code).toBe('FORMAT_CORRUPT');
    expect(refusal(pack([DELTA_MAP_MAGIC, 1, 100, 1, indices([100])])).code).toBe('FORMAT_CORRUPT');
    expect(refusal(pack([DELTA_MAP_MAGIC, 1, 100, 7, new Uint8Array(0)])).message).toMatch(/unknown payload encoding 7/);
    expect(refusal(pack([DELTA_MAP_MAGIC, 1, -1, 0, new Uint8Array(0)])).code).toBe('FORMAT_CORRUPT');
    expect(refusal(pack([DELTA_MAP_MAGIC, 1, 8, 0, 'not binary'])).code).toBe('FORMAT_CORRUPT');
    expect(refusal(new Uint8Array([0xc1])).code).toBe('FORMAT_BAD_MAGIC'); // some other msgpack value
  });
});
