// Codecs for the chain's objects: deltas (deltas/<seq>) and checkpoint PIT maps
// (checkpoints/<seq>). Layouts are in docs/FORMAT.md. Integer arrays are stored as
// little-endian u32 bytes; digests as 32 bytes each, in ascending region order.

import { FormatError } from '../errors.js';
import { decodeDeltaMap, encodeDeltaMap } from '../model/delta-map-codec.js';
import { DELTA_KINDS, type Delta, DIGEST_BYTES, PitMap, ZERO_REGION } from '../model/pit-map.js';
import { FieldReader, openEnvelope, sealEnvelope } from './envelope.js';
import { isPackKey, seqName } from './keys.js';

export const DELTA_MAGIC = 'CDPS3DLT';
export const CHECKPOINT_MAGIC = 'CDPS3CKP';
export const CHAIN_FORMAT_VERSION = 1;

const deltaKind = (seq: number) => ({ magic: DELTA_MAGIC, version: CHAIN_FORMAT_VERSION, what: `delta ${seqName(seq)}` });
const checkpointKind = (seq: number) => ({ magic: CHECKPOINT_MAGIC, version: CHAIN_FORMAT_VERSION, what: `checkpoint ${seqName(seq)}` });

function u32Bytes(values: Uint32Array): Uint8Array {
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength); // hosts are little-endian (checked at load)
}

function u32Array(bytes: Uint8Array): Uint32Array {
  const copy = new Uint8Array(bytes); // a copy: aligned and owned (Buffer.slice would be a view)
  return new Uint32Array(copy.buffer, 0, copy.length / 4);
}

/** The `packs` field, each a well-formed pack key (never a path out of the repository). */
function packKeys(r: FieldReader, what: string): string[] {
  const packs = r.strings('packs');
  for (const key of packs) {
    if (!isPackKey(key)) {
      const shown = JSON.stringify(key.length > 80 ? `${key.slice(0, 80)}…` : key);
      throw new FormatError('FORMAT_CORRUPT', what, `names pack ${shown}, which is not a pack key (packs/<16-digit seq>-<8 hex digits>)`);
    }
  }
  return packs;
}

export function encodeDelta(delta: Delta, volumeId: string): Uint8Array {
  return sealEnvelope(deltaKind(delta.seq), {
    seq: delta.seq,
    volumeId,
    kind: delta.kind,
    start: delta.start,
    end: delta.end,
    changed: encodeDeltaMap(delta.changed),
    packs: delta.packs,
    entryPack: u32Bytes(delta.entryPack),
    entryOffset: u32Bytes(delta.entryOffset),
    digests: delta.digests,
    storedBytes: delta.storedBytes,
    ...(delta.source === undefined ? {} : { sourceHost: delta.source.host, sourcePath: delta.source.path }),
  });
}

/** Decodes and cross-checks a delta; `expectedSeq` is the seq its key names. */
export function decodeDelta(bytes: Uint8Array, expectedSeq: number, volumeId: string, regionCount: number): Delta {
  const what = deltaKind(expectedSeq).what;
  const r = new FieldReader(what, openEnvelope(deltaKind(expectedSeq), bytes));
  const seq = r.integer('seq', 1);
  if (seq !== expectedSeq) throw new FormatError('FORMAT_CORRUPT', what, `holds seq ${seq}; the key says ${expectedSeq}`);
  if (r.string('volumeId') !== volumeId) throw new FormatError('FORMAT_CORRUPT', what, 'belongs to another volume');
  let changed;
  try {
    changed = decodeDeltaMap(r.bytes('changed'));
  } catch (error) {
    if (error instanceof FormatError) throw new FormatError(error.code as never, what, error.message, { cause: error });
    throw error;
  }
  if (changed.regionCount !== regionCount) {
    throw new FormatError('FORMAT_CORRUPT', what, `covers ${changed.regionCount} regions, the volume has ${regionCount}`);
  }
  const count = changed.count();
  const packs = packKeys(r, what);
  const entryPack = u32Array(r.bytes('entryPack', count * 4));
  for (const p of entryPack) {
    if (p !== ZERO_REGION && p >= packs.length) throw new FormatError('FORMAT_CORRUPT', what, `entry names pack ${p} of ${packs.length}`);
  }
  const start = r.integer('start');
  const end = r.integer('end');
  if (end < start) throw new FormatError('FORMAT_CORRUPT', what, 'ends before it starts');
  return {
    seq,
    kind: r.oneOf('kind', DELTA_KINDS),
    start,
    end,
    changed,
    packs,
    entryPack,
    entryOffset: u32Array(r.bytes('entryOffset', count * 4)),
    digests: new Uint8Array(r.bytes('digests', count * DIGEST_BYTES)),
    storedBytes: r.integer('storedBytes'),
    source: r.has('sourcePath') ? { host: r.string('sourceHost'), path: r.string('sourcePath') } : undefined,
  };
}

export function encodeCheckpoint(pit: PitMap, volumeId: string): Uint8Array {
  const { packs, packOf } = pit.compactPacks();
  return sealEnvelope(checkpointKind(pit.seq), {
    seq: pit.seq,
    volumeId,
    time: pit.time,
    regionCount: pit.regionCount,
    packs,
    packOf: u32Bytes(packOf),
    offsetOf: u32Bytes(pit.offsetOf),
    digests: pit.digests,
  });
}

export function decodeCheckpoint(bytes: Uint8Array, expectedSeq: number, volumeId: string, regionCount: number): PitMap {
  const what = checkpointKind(expectedSeq).what;
  const r = new FieldReader(what, openEnvelope(checkpointKind(expectedSeq), bytes));
  const seq = r.integer('seq', 1);
  if (seq !== expectedSeq) throw new FormatError('FORMAT_CORRUPT', what, `holds seq ${seq}; the key says ${expectedSeq}`);
  if (r.string('volumeId') !== volumeId) throw new FormatError('FORMAT_CORRUPT', what, 'belongs to another volume');
  if (r.integer('regionCount') !== regionCount) throw new FormatError('FORMAT_CORRUPT', what, 'region count differs from the config');
  const packs = packKeys(r, what);
  const packOf = u32Array(r.bytes('packOf', regionCount * 4));
  const offsetOf = u32Array(r.bytes('offsetOf', regionCount * 4));
  const digests = r.bytes('digests', regionCount * DIGEST_BYTES);
  const pit = new PitMap(regionCount);
  pit.seq = seq;
  pit.time = r.integer('time');
  for (let region = 0; region < regionCount; region++) {
    const p = packOf[region]!;
    if (p !== ZERO_REGION && p >= packs.length) throw new FormatError('FORMAT_CORRUPT', what, `region ${region} names pack ${p} of ${packs.length}`);
    const location = p === ZERO_REGION ? undefined : { pack: packs[p]!, offset: offsetOf[region]! };
    pit.setRegion(region, location, digests.subarray(region * DIGEST_BYTES, (region + 1) * DIGEST_BYTES));
  }
  return pit;
}
