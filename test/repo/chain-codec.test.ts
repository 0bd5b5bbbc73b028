import { describe, expect, it } from 'vitest';
import { FormatError } from '../../src/errors.js';
import { DeltaMap } from '../../src/model/delta-map.js';
import { type Delta, PitMap, ZERO_REGION } from '../../src/model/pit-map.js';
import { decodeCheckpoint, decodeDelta, encodeCheckpoint, encodeDelta } from '../../src/repo/chain-codec.js';
import { decodeConfig, encodeConfig, newConfig } from '../../src/repo/config.js';

function sampleDelta(): Delta {
  const changed = DeltaMap.of(100, [3, 50, 99]);
  const digests = new Uint8Array(3 * 32);
  for (let i = 0; i < digests.length; i++) digests[i] = i;
  return {
    seq: 1,
    kind: 'base',
    start: 1000,
    end: 2000,
    changed,
    packs: ['packs/0000000000000001-000000aa'],
    entryPack: new Uint32Array([0, ZERO_REGION, 0]),
    entryOffset: new Uint32Array([16, 0, 1040]),
    digests,
    storedBytes: 2048,
    source: { host: 'h', path: '/dev/sda' },
  };
}

/** The encoded bytes in the middle of a larger Buffer, as a store may hand them back. */
function embedded(bytes: Uint8Array): Buffer {
  const big = Buffer.alloc(bytes.length + 64, 0x43);
  big.set(bytes, 13);
  return big.subarray(13, 13 + bytes.length);
}

describe('chain codecs', () => {
  it('round-trips a delta, also from a view into a larger buffer', () => {
    const delta = sampleDelta();
    for (const bytes of [encodeDelta(delta, 'vol'), embedded(encodeDelta(delta, 'vol'))]) {
      const back = decodeDelta(bytes, 1, 'vol', 100);
      expect(Array.from(back.changed)).toEqual([3, 50, 99]);
      expect(Array.from(back.entryPack)).toEqual([0, ZERO_REGION, 0]);
      expect(Array.from(back.entryOffset)).toEqual([16, 0, 1040]);
      expect(Buffer.from(back.digests).equals(Buffer.from(delta.digests))).toBe(true);
      expect(back.source).toEqual({ host: 'h', path: '/dev/sda' });
      expect([back.kind, back.start, back.end, back.storedBytes]).toEqual(['base', 1000, 2000, 2048]);
    }
  });

  it('refuses a delta under the wrong key, of another volume, or with a flipped byte', () => {
    const bytes = encodeDelta(sampleDelta(), 'vol');
    expect(() => decodeDelta(bytes, 2, 'vol', 100)).toThrow(/key says 2/);
    expect(() => decodeDelta(bytes, 1, 'other', 100)).toThrow(/another volume/);
    expect(() => decodeDelta(bytes, 1, 'vol', 101)).toThrow(/101/);
    const flipped = new Uint8Array(bytes);
    flipped[40] = flipped[40]! ^ 1;
    expect(() => decodeDelta(flipped, 1, 'vol', 100)).toThrow(FormatError);
    expect(() => decodeDelta(bytes.subarray(0, bytes.length - 5), 1, 'vol', 100)).toThrow(/checksum mismatch/);
  });

  it('refuses a delta or a checkpoint naming a pack key that is not packs/<16-digit seq>-<8 hex digits>', () => {
    const crafted = [
      '../otherrepo/obj',
      'packs/../../otherrepo/packs/0000000000000001-00000000',
      'packs/0000000000000001-00000000/../../config',
      'config',
      'packs/1-00000000',
      'packs/0000000000000001-0000000g',
      'packs/0000000000000001-000000AA',
      '/packs/0000000000000001-00000000',
    ];
    for (const key of crafted) {
      const delta = { ...sampleDelta(), packs: [key] };
      expect(() => decodeDelta(encodeDelta(delta, 'vol'), 1, 'vol', 100), key).toThrow(FormatError);
      expect(() => decodeDelta(encodeDelta(delta, 'vol'), 1, 'vol', 100), key).toThrow(/delta 0000000000000001: names pack .*, which is not a pack key \(packs\/<16-digit seq>-<8 hex digits>\)/);
      const pit = new PitMap(100);
      pit.apply(delta);
      expect(() => decodeCheckpoint(encodeCheckpoint(pit, 'vol'), 1, 'vol', 100), key).toThrow(/checkpoint 0000000000000001: names pack .*, which is not a pack key/);
    }
  });

  it('round-trips a checkpoint of a PIT map', () => {
    const pit = new PitMap(100);
    pit.apply(sampleDelta());
    const back = decodeCheckpoint(embedded(encodeCheckpoint(pit, 'vol')), 1, 'vol', 100);
    for (let r = 0; r < 100; r++) {
      expect(back.location(r)).toEqual(pit.location(r));
      expect(Buffer.from(back.digest(r)).equals(Buffer.from(pit.digest(r)))).toBe(true);
    }
    expect([back.seq, back.time]).toEqual([1, 2000]);
  });

  it('round-trips the config and refuses unknown versions', () => {
    const config = newConfig({ volumeSize: 10_000_000, regionSize: 65536 });
    expect(decodeConfig(embedded(encodeConfig(config)))).toEqual(config);
    const bytes = new Uint8Array(encodeConfig(config));
    bytes[8] = 9;
    expect(() => decodeConfig(bytes)).toThrow(FormatError);
    expect(() => newConfig({ volumeSize: 100, regionSize: 3000 })).toThrow(/power of two/);
  });
});
