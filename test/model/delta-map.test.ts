// DeltaMap against a plain Set<number> model, with both kernel implementations.

import { describe, expect, it } from 'vitest';
import { type Kernels, referenceKernels, wasmKernels } from '../../src/kernels/index.js';
import { DeltaMap } from '../../src/model/delta-map.js';
import { seededRandom } from '../helpers/random.js';

const rand = seededRandom(42);

function randomRegions(regionCount: number, density: number): Set<number> {
  const set = new Set<number>();
  for (let i = 0; i < regionCount; i++) if (rand() < density) set.add(i);
  return set;
}

const sorted = (set: Iterable<number>): number[] => Array.from(set).sort((a, b) => a - b);

for (const [name, k] of [
  ['wasm', wasmKernels()],
  ['reference', referenceKernels],
] as Array<[string, Kernels]>) {
  describe(`DeltaMap (${name} kernels)`, () => {
    const SIZES = [0, 1, 7, 8, 9, 100, 129, 1000, 70_001];

    it('set, clear and has follow a Set model', () => {
      for (const n of SIZES) {
        const map = new DeltaMap(n, k);
        const model = new Set<number>();
        for (let step = 0; step < Math.min(4 * n, 3000); step++) {
          const region = Math.floor(rand() * n);
          if (rand() < 0.6) {
            map.set(region);
            model.add(region);
          } else {
            map.clear(region);
            model.delete(region);
          }
        }
        for (let region = 0; region < n; region++) expect(map.has(region)).toBe(model.has(region));
        expect(map.count()).toBe(model.size);
        expect(map.isEmpty()).toBe(model.size === 0);
        expect(Array.from(map.regions())).toEqual(sorted(model));
        map.dispose();
      }
    });

    it('union, subtract and intersect are set algebra', () => {
      for (const n of SIZES) {
        for (const density of [0.01, 0.5]) {
          const a = randomRegions(n, density);
          const b = randomRegions(n, density);
          const union = DeltaMap.of(n, a, k).union(DeltaMap.of(n, b, k));
          expect(Array.from(union)).toEqual(sorted(new Set([...a, ...b])));
          const difference = DeltaMap.of(n, a, k).subtract(DeltaMap.of(n, b, k));
          expect(Array.from(difference)).toEqual(sorted([...a].filter((x) => !b.has(x))));
          const intersection = DeltaMap.of(n, a, k).intersect(DeltaMap.of(n, b, k));
          expect(Array.from(intersection)).toEqual(sorted([...a].filter((x) => b.has(x))));
        }
      }
    });

    it('setRange sets exactly [first, end)', () => {
      for (const [n, first, end] of [
        [100, 0, 100],
        [100, 3, 5],
        [100, 5, 70],
        [100, 8, 16],
        [9, 8, 9],
        [1000, 17, 17],
      ] as const) {
        const map = new DeltaMap(n, k).setRange(first, end);
        expect(Array.from(map)).toEqual(Array.from({ length: end - first }, (_, i) => first + i));
      }
    });

    it('equals compares content and size; clone is independent', () => {
      const a = DeltaMap.of(100, [1, 50, 99], k);
      const b = a.clone();
      expect(a.equals(b)).toBe(true);
      b.set(2);
      expect(a.equals(b)).toBe(false);
      expect(a.has(2)).toBe(false);
      expect(DeltaMap.of(101, [1, 50, 99], k).equals(a)).toBe(false);
      expect(new DeltaMap(0, k).equals(new DeltaMap(0, k))).toBe(true);
    });

    it('refuses out-of-range regions and maps of other volumes', () => {
      const map = new DeltaMap(10, k);
      expect(() => map.set(10)).toThrow(/outside the volume's 10 regions/);
      expect(() => map.has(-1)).toThrow(/outside/);
      expect(() => map.set(1.5)).toThrow(/outside/);
      expect(() => map.union(new DeltaMap(11, k))).toThrow(/different volumes/);
      expect(() => new DeltaMap(-1, k)).toThrow(/region count/);
      expect(() => new DeltaMap(2 ** 32, k)).toThrow(/region count/);
      map.dispose();
      expect(() => map.has(0)).toThrow(/after dispose/);
    });

    it('fromBitmap refuses wrong lengths and bits past the end', () => {
      expect(() => DeltaMap.fromBitmap(9, new Uint8Array(1), k)).toThrow(/2 bytes, got 1/);
      expect(() => DeltaMap.fromBitmap(9, new Uint8Array([0, 2]), k)).toThrow(/past region 8/);
      expect(Array.from(DeltaMap.fromBitmap(9, new Uint8Array([0x81, 1]), k))).toEqual([0, 7, 8]);
    });
  });
}

describe('DeltaMap at scale', () => {
  it('handles 16 Mi regions (1 TiB at 64 KiB regions)', () => {
    const n = 16 * 1024 * 1024;
    const a = new DeltaMap(n);
    const b = new DeltaMap(n);
    a.setRange(0, n);
    for (let i = 0; i < n; i += 1000) b.set(i);
    expect(a.count()).toBe(n);
    a.subtract(b);
    expect(a.count()).toBe(n - Math.ceil(n / 1000));
    expect(a.has(0)).toBe(false);
    expect(a.has(n - 1)).toBe(true);
    let seen = 0;
    let last = -1;
    for (const region of b) {
      expect(region).toBeGreaterThan(last);
      last = region;
      seen++;
    }
    expect(seen).toBe(Math.ceil(n / 1000));
    a.union(b);
    expect(a.count()).toBe(n);
    a.dispose();
    b.dispose();
  });
});
