// A store wrapper for the benchmarks that counts every request and byte by object kind (the
// key's prefix: `deltas`, `spans/01`, `pages`, `packs`, `config`, …), and can discard the puts
// of some keys (counted, not stored: region packs of a run whose data nobody reads back).
//
// LIST requests are counted as S3 would bill them: one per page of up to 1000 keys consumed
// from the listing (at least one). The adapters pass no StartAfter to the server (fs and s3
// both list the whole prefix; ChainIndex skips what it did not ask for), so `listPages` is what
// a listing costs today and `listPagesIfStartAfter` what it would cost if StartAfter reached
// the server.

import { DelegatingStore } from '../src/store/delegating.js';
import type { DeleteManyOptions, GetOptions, ListOptions, ObjectInfo, ObjectStore, ObjectVersion, PutOptions, Retention } from '../src/store/types.js';

export const S3_LIST_PAGE = 1000;

export interface KindCounts {
  puts: number;
  putBytes: number;
  gets: number;
  getBytes: number;
  heads: number;
  lists: number;
  listPages: number;
  listPagesIfStartAfter: number;
  deletes: number;
  /** PutObjectRetention requests (Object Lock extensions). */
  retains: number;
}

export function emptyCounts(): KindCounts {
  return { puts: 0, putBytes: 0, gets: 0, getBytes: 0, heads: 0, lists: 0, listPages: 0, listPagesIfStartAfter: 0, deletes: 0, retains: 0 };
}

/** The kind of a key: its first segment, and the level for spans (`spans/02`). */
export function kindOf(key: string): string {
  const slash = key.indexOf('/');
  if (slash < 0) return key === '' ? '(root)' : key;
  const first = key.slice(0, slash);
  if (first === 'spans') {
    const level = key.slice(slash + 1, slash + 3);
    return /^\d{2}$/.test(level) ? `spans/${level}` : 'spans';
  }
  return first;
}

export class RequestCountingStore extends DelegatingStore {
  readonly byKind = new Map<string, KindCounts>();
  /**
   * Page-pack bytes by the run they belong to: a page pack is put right before its run's root
   * (data first), so the bytes put under `pages/` since the last root belong to the next root.
   */
  readonly pageBytesByRun = new Map<string, number>();
  private pendingPageBytes = 0;
  private readonly discarded = new Map<string, number>();

  constructor(
    inner: ObjectStore,
    /** Puts of these keys are counted and dropped. */
    private readonly discard: (key: string) => boolean = () => false,
  ) {
    super(inner);
  }

  counts(kind: string): KindCounts {
    let c = this.byKind.get(kind);
    if (c === undefined) this.byKind.set(kind, (c = emptyCounts()));
    return c;
  }

  /** Sum over kinds (all of them, or those `which` accepts). */
  total(which: (kind: string) => boolean = () => true): KindCounts {
    const sum = emptyCounts();
    for (const [kind, c] of this.byKind) {
      if (!which(kind)) continue;
      for (const field of Object.keys(sum) as Array<keyof KindCounts>) sum[field] += c[field];
    }
    return sum;
  }

  reset(): void {
    this.byKind.clear();
    this.pageBytesByRun.clear();
    this.pendingPageBytes = 0;
  }

  override async put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    const kind = kindOf(key);
    if (this.discard(key)) this.discarded.set(key, body.length);
    else await super.put(key, body, options);
    const c = this.counts(kind);
    c.puts++;
    c.putBytes += body.length;
    if (kind === 'pages') this.pendingPageBytes += body.length;
    else if (kind === 'deltas' || kind.startsWith('spans/')) {
      this.pageBytesByRun.set(kind, (this.pageBytesByRun.get(kind) ?? 0) + this.pendingPageBytes);
      this.pendingPageBytes = 0;
    }
  }

  override async get(key: string, options?: GetOptions): Promise<Uint8Array> {
    const bytes = await super.get(key, options);
    const c = this.counts(kindOf(key));
    c.gets++;
    c.getBytes += bytes.length;
    return bytes;
  }

  override async head(key: string, options?: { signal?: AbortSignal }): Promise<ObjectInfo | undefined> {
    this.counts(kindOf(key)).heads++;
    const size = this.discarded.get(key);
    if (size !== undefined) return { key, size };
    return super.head(key, options);
  }

  /** One request per batch (S3 DeleteObjects), counted under the kind of its first key. */
  override async deleteMany(keys: readonly string[], options?: DeleteManyOptions): Promise<void> {
    if (keys.length > 0) this.counts(kindOf(keys[0]!)).deletes++;
    for (const key of keys) this.discarded.delete(key);
    return super.deleteMany(keys, options);
  }

  override async delete(key: string, options?: { signal?: AbortSignal }): Promise<void> {
    this.counts(kindOf(key)).deletes++;
    this.discarded.delete(key);
    return super.delete(key, options);
  }

  override async retain(key: string, retention: Retention, options?: { signal?: AbortSignal; versionId?: string }): Promise<void> {
    this.counts(kindOf(key)).retains++;
    return super.retain(key, retention, options);
  }

  /** Counted as LIST pages of up to 1000 versions, like list. */
  override async *listVersions(prefix: string, options?: { signal?: AbortSignal }): AsyncIterable<ObjectVersion> {
    const c = this.counts(prefix === '' ? '(root)' : kindOf(prefix.endsWith('/') ? prefix : `${prefix}/`));
    c.lists++;
    let consumed = 0;
    try {
      for await (const v of super.listVersions(prefix, options)) {
        consumed++;
        yield v;
      }
    } finally {
      c.listPages += Math.max(1, Math.ceil(consumed / S3_LIST_PAGE));
      c.listPagesIfStartAfter += Math.max(1, Math.ceil(consumed / S3_LIST_PAGE));
    }
  }

  override async *list(prefix: string, options?: ListOptions): AsyncIterable<ObjectInfo> {
    const c = this.counts(prefix === '' ? '(root)' : kindOf(prefix.endsWith('/') ? prefix : `${prefix}/`));
    c.lists++;
    let consumed = 0;
    let afterStart = 0;
    try {
      for await (const info of super.list(prefix, options)) {
        consumed++;
        if (options?.startAfter === undefined || info.key > options.startAfter) afterStart++;
        yield info;
      }
    } finally {
      c.listPages += Math.max(1, Math.ceil(consumed / S3_LIST_PAGE));
      c.listPagesIfStartAfter += Math.max(1, Math.ceil(afterStart / S3_LIST_PAGE));
    }
  }
}

/** Requests of `c` as S3 bills them: PUT, GET, HEAD, LIST pages, DELETE. */
export function requests(c: KindCounts): number {
  return c.puts + c.gets + c.heads + c.listPages + c.deletes;
}
