// RegionFetcher.fetch on its own: over a pack held in memory (a stand-in Repository), with real
// worker threads. What serve relies on: reading into the caller's buffer, a result per slice,
// and verifying on the main thread once the threads are gone (only then).

import { createHash } from 'node:crypto';
import { mkdtemp, open, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PieceCodec } from '../../src/repo/pieces.js';
import { type FetchRange, MAX_RANGE_BYTES, RegionFetcher } from '../../src/core/region-fetcher.js';
import { IntegrityError } from '../../src/errors.js';
import type { Repository } from '../../src/repo/repository.js';
import { RegionIoError, RegionPool } from '../../src/volume/region-pool.js';

const REGION = 4096;
const sha = (b: Uint8Array): Uint8Array => createHash('sha256').update(b).digest();

/** Four regions, each filled with its number + 1. */
const pack = Buffer.concat([0, 1, 2, 3].map((r) => Buffer.alloc(REGION, r + 1)));
/** The same regions as stored in pack 'p': back to back, each in its frame (a codec byte, 0: raw). */
const FRAME = REGION + 1;
const stored = Buffer.concat([0, 1, 2, 3].map((r) => Buffer.concat([Buffer.from([0]), Buffer.alloc(REGION, r + 1)])));

/** The range of regions [first, first + count) of the pack. */
function rangeOf(first: number, count: number): FetchRange {
  return {
    pack: 'p',
    offset: first * FRAME,
    length: count * REGION,
    stored: count * FRAME,
    slices: Array.from({ length: count }, (_, i) => ({
      at: i * REGION,
      length: REGION,
      storedAt: i * FRAME,
      storedLength: FRAME,
      digest: sha(pack.subarray((first + i) * REGION, (first + i + 1) * REGION)),
      regions: [first + i],
    })),
  };
}

/** Reads the pack as a store that fills `into` does; remembers each `into` it was given. */
class PackRepository {
  readonly intos: Array<Uint8Array | undefined> = [];
  readonly pieces = new PieceCodec('volume', undefined);
  async readPackRange(_pack: string, offset: number, length: number, _signal?: AbortSignal, into?: Uint8Array): Promise<Uint8Array> {
    this.intos.push(into);
    const target = into === undefined ? new Uint8Array(length) : into.subarray(0, length);
    target.set(stored.subarray(offset, offset + length));
    return target;
  }
}

/** Makes the pool's threads fail as if a worker had crashed. */
function failThreads(pool: RegionPool): void {
  (pool as unknown as { fail(error: Error): void }).fail(new Error('worker crashed'));
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'cdp-region-fetcher-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('RegionFetcher.fetch', () => {
  const pools: RegionPool[] = [];
  const fetcherOf = (options: ConstructorParameters<typeof RegionFetcher>[2] = {}): { fetcher: RegionFetcher; repo: PackRepository; pool: RegionPool } => {
    const repo = new PackRepository();
    const pool = new RegionPool(1);
    pools.push(pool);
    return { fetcher: new RegionFetcher(repo as unknown as Repository, pool, options), repo, pool };
  };
  afterEach(async () => {
    for (const pool of pools.splice(0)) await pool.close();
  });

  it("decodes into the caller's buffer and hands the verified bytes back, never keeping the buffer", async () => {
    const { fetcher, repo } = fetcherOf();
    // As large as the fetcher's own buffers, so it could have kept it as one of them.
    const into = new Uint8Array(MAX_RANGE_BYTES);
    const fetched = await fetcher.fetch(rangeOf(1, 2), { into });
    expect(repo.intos[0]).not.toBe(into); // the frames are read elsewhere, then decoded into it
    expect(Buffer.from(fetched.bytes!).equals(pack.subarray(REGION, 3 * REGION))).toBe(true);
    // The same memory went to the thread and back: the whole buffer, under a new ArrayBuffer.
    expect(into.byteLength).toBe(0);
    expect(fetched.bytes!.buffer.byteLength).toBe(MAX_RANGE_BYTES);
    // A fetch of its own does not read into what came back from the caller's.
    await fetcher.fetch(rangeOf(0, 1), {});
    expect(repo.intos[1]?.buffer).not.toBe(fetched.bytes!.buffer);
    expect(fetcher.gets).toBe(2);
    expect(fetcher.bytesFetched).toBe(3 * FRAME);
  });

  it('reports damage slice by slice with reportDamage, else throws the first as an IntegrityError', async () => {
    const { fetcher } = fetcherOf();
    const range = rangeOf(0, 3);
    range.slices[1]!.digest = sha(Buffer.from('something else'));
    const fetched = await fetcher.fetch(range, { reportDamage: true, into: new Uint8Array(3 * REGION) });
    expect(fetched.mismatches.map((m) => m.slice)).toEqual([1]);
    expect(Buffer.from(fetched.bytes!.subarray(0, REGION)).equals(pack.subarray(0, REGION))).toBe(true);
    const error = await fetcher.fetch(range, {}).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(IntegrityError);
    expect((error as Error).message).toMatch(new RegExp(`^region 1 in p at ${FRAME}: digest mismatch`));
  });

  it('verifies and writes on the main thread once the threads have failed, with onPoolFailure (told once)', async () => {
    const told: string[] = [];
    const { fetcher, pool } = fetcherOf({ onPoolFailure: (error) => told.push(error.message) });
    failThreads(pool);
    const target = join(dir, 'fallback.img');
    const file = await open(target, 'w+');
    try {
      const range = rangeOf(0, 4);
      range.slices[2]!.digest = sha(Buffer.from('something else'));
      const fetched = await fetcher.fetch(range, { reportDamage: true, writes: (slice) => [[file.fd, slice.regions[0]! * REGION]] });
      expect(fetched.mismatches.map((m) => m.slice)).toEqual([2]);
      const again = await fetcher.fetch(rangeOf(0, 1), { keepBytes: true });
      expect(Buffer.from(again.bytes!).equals(pack.subarray(0, REGION))).toBe(true);
    } finally {
      await file.close();
    }
    expect(told).toEqual([expect.stringMatching(/worker crashed/)]);
    // Verified slices were written, the mismatching one was not.
    const written = await readFile(target);
    expect(written.subarray(0, 2 * REGION).equals(pack.subarray(0, 2 * REGION))).toBe(true);
    expect(written.subarray(2 * REGION, 3 * REGION).equals(Buffer.alloc(REGION))).toBe(true);
    expect(written.subarray(3 * REGION).equals(pack.subarray(3 * REGION))).toBe(true);
  });

  it('fails with the pool\'s error without onPoolFailure, and a failed write on a live thread never falls back', async () => {
    const dead = fetcherOf();
    failThreads(dead.pool);
    await expect(dead.fetcher.fetch(rangeOf(0, 1), {})).rejects.toThrow(/worker crashed/);

    const told: Error[] = [];
    const { fetcher } = fetcherOf({ onPoolFailure: (error) => told.push(error) });
    const readOnly = await open(join(dir, 'read-only.img'), 'w').then(async (f) => {
      await f.close();
      return open(join(dir, 'read-only.img'), 'r');
    });
    try {
      const error = await fetcher.fetch(rangeOf(0, 1), { writes: () => [[readOnly.fd, 0]] }).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(RegionIoError);
    } finally {
      await readOnly.close();
    }
    expect(told).toEqual([]);
  });
});
