// Sample disk images for the demo, tests and benchmarks: random, zero and repeated regions,
// and in-place changes, all from a seeded generator so runs repeat exactly.

/** A small deterministic PRNG (mulberry32). */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface ImageSpec {
  size: number;
  regionSize: number;
  seed?: number;
  /** Fractions of regions that are zero and that repeat an earlier region; the rest random. */
  zero?: number;
  repeated?: number;
}

function fillRandom(bytes: Uint8Array, rand: () => number): void {
  const head = Math.min((4 - (bytes.byteOffset & 3)) & 3, bytes.length);
  for (let i = 0; i < head; i++) bytes[i] = rand() * 256;
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset + head, (bytes.length - head) >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = rand() * 2 ** 32;
  for (let i = head + words.length * 4; i < bytes.length; i++) bytes[i] = rand() * 256;
}

export function makeImage(spec: ImageSpec): Buffer {
  const rand = seededRandom(spec.seed ?? 1);
  const image = Buffer.alloc(spec.size);
  const regions = Math.ceil(spec.size / spec.regionSize);
  for (let r = 0; r < regions; r++) {
    const region = image.subarray(r * spec.regionSize, Math.min(spec.size, (r + 1) * spec.regionSize));
    const roll = rand();
    if (roll < (spec.zero ?? 0.2)) continue;
    if (roll < (spec.zero ?? 0.2) + (spec.repeated ?? 0.1) && r > 0) {
      const from = Math.floor(rand() * r);
      region.set(image.subarray(from * spec.regionSize, from * spec.regionSize + region.length));
      continue;
    }
    fillRandom(region, rand);
  }
  return image;
}

/** Changes `count` random spans of the image in place (random bytes, zeros, or copies). */
export function mutateImage(image: Buffer, count: number, seed: number): void {
  const rand = seededRandom(seed);
  for (let i = 0; i < count; i++) {
    const length = 1 + Math.floor(rand() * 100_000);
    const offset = Math.floor(rand() * (image.length - length));
    const span = image.subarray(offset, offset + length);
    const kind = rand();
    if (kind < 0.2) span.fill(0);
    else fillRandom(span, rand);
  }
}
