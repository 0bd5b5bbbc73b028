// SIMD kernels for cdp-s3: bitmap algebra, zero detection and byte compare.
//
// ABI: every kernel takes pointers and byte lengths into this module's memory, which the
// TypeScript side owns (src/kernels/). Nothing here allocates (runtime "stub"), so pointers
// stay valid for the whole call. Bitmaps are little-endian bit order: bit i lives in byte
// i >> 3 at bit position i & 7. Loops run 64 bytes, then 16 bytes, then single bytes, so any
// length and any alignment is accepted.

/** First byte past this module's static data: the TypeScript heap starts at or after it. */
export function heapBase(): usize {
  return __heap_base;
}

/** dst |= src over len bytes. */
export function bitsOr(dst: usize, src: usize, len: usize): void {
  let i: usize = 0;
  const end64 = len & ~(<usize>63);
  for (; i < end64; i += 64) {
    v128.store(dst + i, v128.or(v128.load(dst + i), v128.load(src + i)));
    v128.store(dst + i + 16, v128.or(v128.load(dst + i + 16), v128.load(src + i + 16)));
    v128.store(dst + i + 32, v128.or(v128.load(dst + i + 32), v128.load(src + i + 32)));
    v128.store(dst + i + 48, v128.or(v128.load(dst + i + 48), v128.load(src + i + 48)));
  }
  const end16 = len & ~(<usize>15);
  for (; i < end16; i += 16) v128.store(dst + i, v128.or(v128.load(dst + i), v128.load(src + i)));
  for (; i < len; i++) store<u8>(dst + i, load<u8>(dst + i) | load<u8>(src + i));
}

/** dst &= src over len bytes. */
export function bitsAnd(dst: usize, src: usize, len: usize): void {
  let i: usize = 0;
  const end64 = len & ~(<usize>63);
  for (; i < end64; i += 64) {
    v128.store(dst + i, v128.and(v128.load(dst + i), v128.load(src + i)));
    v128.store(dst + i + 16, v128.and(v128.load(dst + i + 16), v128.load(src + i + 16)));
    v128.store(dst + i + 32, v128.and(v128.load(dst + i + 32), v128.load(src + i + 32)));
    v128.store(dst + i + 48, v128.and(v128.load(dst + i + 48), v128.load(src + i + 48)));
  }
  const end16 = len & ~(<usize>15);
  for (; i < end16; i += 16) v128.store(dst + i, v128.and(v128.load(dst + i), v128.load(src + i)));
  for (; i < len; i++) store<u8>(dst + i, load<u8>(dst + i) & load<u8>(src + i));
}

/** dst &= ~src over len bytes (set difference). */
export function bitsAndNot(dst: usize, src: usize, len: usize): void {
  let i: usize = 0;
  const end64 = len & ~(<usize>63);
  for (; i < end64; i += 64) {
    v128.store(dst + i, v128.andnot(v128.load(dst + i), v128.load(src + i)));
    v128.store(dst + i + 16, v128.andnot(v128.load(dst + i + 16), v128.load(src + i + 16)));
    v128.store(dst + i + 32, v128.andnot(v128.load(dst + i + 32), v128.load(src + i + 32)));
    v128.store(dst + i + 48, v128.andnot(v128.load(dst + i + 48), v128.load(src + i + 48)));
  }
  const end16 = len & ~(<usize>15);
  for (; i < end16; i += 16) v128.store(dst + i, v128.andnot(v128.load(dst + i), v128.load(src + i)));
  for (; i < len; i++) store<u8>(dst + i, load<u8>(dst + i) & ~load<u8>(src + i));
}

/** dst ^= src over len bytes. */
export function bitsXor(dst: usize, src: usize, len: usize): void {
  let i: usize = 0;
  const end64 = len & ~(<usize>63);
  for (; i < end64; i += 64) {
    v128.store(dst + i, v128.xor(v128.load(dst + i), v128.load(src + i)));
    v128.store(dst + i + 16, v128.xor(v128.load(dst + i + 16), v128.load(src + i + 16)));
    v128.store(dst + i + 32, v128.xor(v128.load(dst + i + 32), v128.load(src + i + 32)));
    v128.store(dst + i + 48, v128.xor(v128.load(dst + i + 48), v128.load(src + i + 48)));
  }
  const end16 = len & ~(<usize>15);
  for (; i < end16; i += 16) v128.store(dst + i, v128.xor(v128.load(dst + i), v128.load(src + i)));
  for (; i < len; i++) store<u8>(dst + i, load<u8>(dst + i) ^ load<u8>(src + i));
}

/** Number of set bits in len bytes. Callers keep len below 512 MiB so the count fits in u32. */
export function popcount(ptr: usize, len: usize): u32 {
  let total = i32x4.splat(0);
  let i: usize = 0;
  const end64 = len & ~(<usize>63);
  while (i < end64) {
    // Byte lanes count at most 8 per vector; 7 steps of 4 vectors (<= 8 * 28 = 224) stay in u8.
    let acc = i8x16.splat(0);
    const stop = min(end64, i + 7 * 64);
    for (; i < stop; i += 64) {
      const a = i8x16.add(i8x16.popcnt(v128.load(ptr + i)), i8x16.popcnt(v128.load(ptr + i + 16)));
      const b = i8x16.add(i8x16.popcnt(v128.load(ptr + i + 32)), i8x16.popcnt(v128.load(ptr + i + 48)));
      acc = i8x16.add(acc, i8x16.add(a, b));
    }
    total = i32x4.add(total, i32x4.extadd_pairwise_i16x8_u(i16x8.extadd_pairwise_i8x16_u(acc)));
  }
  const end16 = len & ~(<usize>15);
  for (; i < end16; i += 16) {
    const c = i8x16.popcnt(v128.load(ptr + i));
    total = i32x4.add(total, i32x4.extadd_pairwise_i16x8_u(i16x8.extadd_pairwise_i8x16_u(c)));
  }
  let count: u32 =
    <u32>i32x4.extract_lane(total, 0) +
    <u32>i32x4.extract_lane(total, 1) +
    <u32>i32x4.extract_lane(total, 2) +
    <u32>i32x4.extract_lane(total, 3);
  for (; i < len; i++) count += popcnt<u32>(<u32>load<u8>(ptr + i));
  return count;
}

/** 1 when all len bytes are zero, else 0. Stops at the first non-zero 64-byte block. */
export function isZero(ptr: usize, len: usize): i32 {
  let i: usize = 0;
  const end64 = len & ~(<usize>63);
  for (; i < end64; i += 64) {
    const v = v128.or(
      v128.or(v128.load(ptr + i), v128.load(ptr + i + 16)),
      v128.or(v128.load(ptr + i + 32), v128.load(ptr + i + 48)),
    );
    if (v128.any_true(v)) return 0;
  }
  const end16 = len & ~(<usize>15);
  for (; i < end16; i += 16) if (v128.any_true(v128.load(ptr + i))) return 0;
  for (; i < len; i++) if (load<u8>(ptr + i) != 0) return 0;
  return 1;
}

/** Offset of the first byte where a and b differ, or -1 when the len bytes are equal. */
export function firstDifference(a: usize, b: usize, len: usize): isize {
  let i: usize = 0;
  const end64 = len & ~(<usize>63);
  for (; i < end64; i += 64) {
    const e = v128.and(
      v128.and(i8x16.eq(v128.load(a + i), v128.load(b + i)), i8x16.eq(v128.load(a + i + 16), v128.load(b + i + 16))),
      v128.and(
        i8x16.eq(v128.load(a + i + 32), v128.load(b + i + 32)),
        i8x16.eq(v128.load(a + i + 48), v128.load(b + i + 48)),
      ),
    );
    if (!i8x16.all_true(e)) break; // the 16-byte loop below finds the exact byte
  }
  const end16 = len & ~(<usize>15);
  for (; i < end16; i += 16) {
    const mask = i8x16.bitmask(i8x16.eq(v128.load(a + i), v128.load(b + i)));
    if (mask != 0xffff) return <isize>(i + ctz<u32>(~mask & 0xffff));
  }
  for (; i < len; i++) if (load<u8>(a + i) != load<u8>(b + i)) return <isize>i;
  return -1;
}

/** Emits the set bits of `word` (first bit index `base`) below bitCount, checking capacity. */
@inline
function emitChecked(word: u64, base: u32, bitCount: u32, out: usize, n: u32, cap: u32, indexBase: u32): u32 {
  while (word != 0 && n < cap) {
    const index: u32 = base + <u32>ctz<u64>(word);
    if (index >= bitCount) break;
    store<u32>(out + (<usize>n << 2), index + indexBase);
    n++;
    word &= word - 1;
  }
  return n;
}

/**
 * Writes the indices of set bits in [start, bitCount) in ascending order to out (u32 each),
 * adding indexBase to each, and stops after cap of them. Returns how many it wrote; when that
 * equals cap, call again with start = last index - indexBase + 1 to resume. Entries of out past
 * the returned count may be overwritten. Reads only the ceil(bitCount / 8) bytes of the bitmap.
 */
export function extractSetBits(bits: usize, bitCount: u32, start: u32, out: usize, cap: u32, indexBase: u32): u32 {
  if (start >= bitCount || cap == 0) return 0;
  const fullWords: u32 = bitCount >> 6; // 64-bit words wholly below bitCount
  let n: u32 = 0;
  let w: u32 = start >> 6;
  if (w < fullWords) {
    const first = load<u64>(bits + (<usize>w << 3)) & (<u64>-1 << <u64>(start & 63));
    n = emitChecked(first, w << 6, bitCount, out, n, cap, indexBase);
    w++;
  }
  // Fast path while out has room for a whole word's worth (64): skip zero 64-byte blocks with
  // SIMD, and write four indices per word unconditionally, which avoids most mispredicted
  // branches when words hold a bit or two (a sparse change map). Extra writes land past n.
  while (w < fullWords && cap - n >= 64) {
    if ((w & 7) == 0 && w + 8 <= fullWords) {
      const p = bits + (<usize>w << 3);
      const any = v128.or(v128.or(v128.load(p), v128.load(p + 16)), v128.or(v128.load(p + 32), v128.load(p + 48)));
      if (!v128.any_true(any)) {
        w += 8;
        continue;
      }
    }
    let word = load<u64>(bits + (<usize>w << 3));
    const base: u32 = (w << 6) + indexBase;
    const count = <u32>popcnt<u64>(word);
    const o = out + (<usize>n << 2);
    store<u32>(o, base + <u32>ctz<u64>(word));
    word &= word - 1;
    store<u32>(o + 4, base + <u32>ctz<u64>(word));
    word &= word - 1;
    store<u32>(o + 8, base + <u32>ctz<u64>(word));
    word &= word - 1;
    store<u32>(o + 12, base + <u32>ctz<u64>(word));
    word &= word - 1;
    if (count > 4) {
      n += 4;
      while (word != 0) {
        store<u32>(out + (<usize>n << 2), base + <u32>ctz<u64>(word));
        n++;
        word &= word - 1;
      }
    } else {
      n += count;
    }
    w++;
  }
  // Checked path: the rest when out is nearly full, then the bytes of the last partial word.
  for (; w < fullWords && n < cap; w++) {
    n = emitChecked(load<u64>(bits + (<usize>w << 3)), w << 6, bitCount, out, n, cap, indexBase);
  }
  if (w == fullWords && n < cap) {
    const byteLen: usize = (<usize>bitCount + 7) >> 3;
    let tail: u64 = 0;
    for (let b: usize = <usize>w << 3; b < byteLen; b++) tail |= <u64>load<u8>(bits + b) << (<u64>(b & 7) << 3);
    if ((w << 6) < start) tail &= <u64>-1 << <u64>(start & 63);
    n = emitChecked(tail, w << 6, bitCount, out, n, cap, indexBase);
  }
  return n;
}
