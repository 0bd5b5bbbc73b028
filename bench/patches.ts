// `npm run bench -- patches [--json] [--parts random,rpo,sequential,mixed,replay,restore] [options]`:
// issue 11's targets for block-level deltas, as counts and same-run ratios.
//
//  random      random 4 KiB writes under protect (16 GiB thin volume, 100 and 1,000 writes/s, 5 s
//              interval, real time): bytes uploaded / bytes written, metadata bytes per point
//  rpo         1,000 random 4 KiB writes/s on 64 GiB, local store and s3rver: the oldest unshipped
//              write, sampled every 100 ms (median, p95, max), against 2 × the interval
//  sequential  sequential 1 MiB writes: amplification ≈ 1 (whole regions, as before)
//  mixed       a database-like pattern in real time (random 4 KiB page writes, 80% of them to a hot
//              tenth of the volume, and sequential 4 KiB log appends): uploaded / written and RPO
//  replay      the random and mixed patterns replayed for 30 minutes' worth of intervals (no
//              waiting: the writes of an interval, then its seal): uploaded / written over a long run,
//              where regions cross the chain bound
//  restore     restore of a volume whose regions all carry the longest patch chains vs the same
//              image stored whole (local store and s3rver), each a median of --runs
//
// Writes go through the protected volume in-process (the NBD export's own write path) with up to
// 32 in flight, as a client with a queue would keep them; protect() runs with its real interval
// timer and status reports.

import { randomFillSync } from 'node:crypto';
import { copyFile, mkdtemp, open, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/cli/units.js';
import { init } from '../src/core/init.js';
import { backup } from '../src/core/backup.js';
import { type ProtectHandle, ProtectedVolume, protect } from '../src/core/protect.js';
import { seededRandom } from '../src/demo/sample-image.js';
import { s3ServerEnv, startS3Server } from '../src/dev/s3-server.js';
import { openStore } from '../src/store/open.js';
import type { ObjectStore } from '../src/store/types.js';
import { RequestCountingStore } from './counting-store.js';
import { median, option, table } from './harness.js';
import { cdp, medianOf } from './workload.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const BLOCK = 4096;
const ALL_PARTS = ['random', 'rpo', 'sequential', 'mixed', 'replay', 'restore'];

export interface PatchesRow {
  part: string;
  measure: string;
  value: string;
  target: string;
  ok: string;
  note: string;
}

interface Options {
  parts: string[];
  /** Write rates of the random part. */
  rates: number[];
  seconds: number;
  intervalMs: number;
  randomSize: number;
  rpoSize: number;
  rpoRegionSizes: number[];
  replayIntervals: number;
  replayRandomIntervals: number;
  restoreSize: number;
  runs: number;
  dir: string;
}

function row(part: string, measure: string, value: string, extra: Partial<Omit<PatchesRow, 'part' | 'measure' | 'value'>> = {}): PatchesRow {
  return { part, measure, value, target: extra.target ?? '', ok: extra.ok ?? '', note: extra.note ?? '' };
}
const check = (ok: boolean): string => (ok ? '✓' : '✗');
const fmt = (n: number, digits = 2): string => n.toFixed(digits);
const pct = (sorted: number[], p: number): number => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? 0;

/** A write the pattern makes: where, how long, or zeros. */
interface Write {
  offset: number;
  length: number;
}

/** Random aligned 4 KiB writes over the whole volume. */
function randomPattern(size: number, seed: number): () => Write {
  const rand = seededRandom(seed);
  const blocks = size / BLOCK;
  return () => ({ offset: Math.floor(rand() * blocks) * BLOCK, length: BLOCK });
}

/**
 * A database's pattern: page writes of 4 KiB, 80% of them to a hot tenth of the volume, and, one
 * write in three, a 4 KiB append to a log that wraps around the last GiB.
 */
function mixedPattern(size: number, seed: number): () => Write {
  const rand = seededRandom(seed);
  const logStart = size - GiB;
  const hotBlocks = Math.floor(logStart / 10 / BLOCK);
  const dataBlocks = logStart / BLOCK;
  let logAt = 0;
  return () => {
    const roll = rand();
    if (roll < 1 / 3) {
      const offset = logStart + logAt;
      logAt = (logAt + BLOCK) % GiB;
      return { offset, length: BLOCK };
    }
    const block = roll < 1 / 3 + (2 / 3) * 0.8 ? Math.floor(rand() * hotBlocks) : Math.floor(rand() * dataBlocks);
    return { offset: block * BLOCK, length: BLOCK };
  };
}

/** Sequential 1 MiB writes from the start of the volume. */
function sequentialPattern(size: number): () => Write {
  let at = 0;
  return () => {
    const write = { offset: at, length: MiB };
    at = (at + MiB) % size;
    return write;
  };
}

/** A thin volume (a sparse file) of `size` with a base backup in a fresh repository. */
async function thinVolume(dir: string, size: number, store: ObjectStore, regionSize?: number): Promise<{ source: string; drl: string }> {
  const source = join(dir, 'disk.img');
  await writeFile(source, '');
  await truncate(source, size);
  await init({ store, from: source, regionSize });
  await backup({ store, source });
  return { source, drl: join(dir, 'disk.drl') };
}

interface RunResult {
  written: number;
  writes: number;
  packBytes: number;
  metadataBytes: number;
  points: number;
  lags: number[];
  seconds: number;
}

/** `rate` writes a second from `next` for `seconds` through protect (up to 32 in flight), then a clean stop. */
async function realTime(store: RequestCountingStore, volume: { source: string; drl: string }, next: () => Write, rate: number, o: Options): Promise<RunResult> {
  const handle: ProtectHandle = await protect({ store, source: volume.source, drl: volume.drl, listen: { host: '127.0.0.1', port: 0 }, intervalMs: o.intervalMs, log: process.env['BENCH_PROTECT_LOG'] === undefined ? undefined : (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`) });
  store.reset();
  const lags: number[] = [];
  const sampler = setInterval(() => lags.push(handle.volume.status().lagMs), 100);
  const inFlight = new Set<Promise<void>>();
  let written = 0;
  let writes = 0;
  // Fresh random content in a few buffers taken in turn (a write's buffer is not touched again
  // until it is done: at most 32 are in flight).
  const contents = Array.from({ length: 64 }, () => Buffer.allocUnsafe(MiB));
  const start = Date.now();
  try {
    while (Date.now() - start < o.seconds * 1000) {
      if (writes < ((Date.now() - start) / 1000) * rate) {
        while (inFlight.size >= 32) await Promise.race(inFlight);
        const w = next();
        const bytes = randomFillSync(contents[writes % contents.length]!.subarray(0, w.length));
        const p: Promise<void> = handle.volume.write(w.offset, bytes, false).finally(() => inFlight.delete(p));
        inFlight.add(p);
        written += w.length;
        writes++;
      } else await new Promise((r) => setTimeout(r, 2));
    }
    await Promise.all(inFlight);
  } finally {
    clearInterval(sampler);
  }
  const seconds = (Date.now() - start) / 1000;
  const status = await handle.stop();
  const packs = store.byKind.get('packs')?.putBytes ?? 0;
  const meta = store.total((k) => k !== 'packs' && k !== 'status' && k !== 'locks').putBytes;
  return { written, writes, packBytes: packs, metadataBytes: meta, points: status.deltasShipped, lags: lags.sort((a, b) => a - b), seconds };
}

/** `intervals` intervals of `perInterval` writes from `next`, each sealed and shipped at once (no waiting). */
async function replay(store: RequestCountingStore, volume: { source: string; drl: string }, next: () => Write, perInterval: number, intervals: number, log: (line: string) => void): Promise<RunResult & { curve: Array<[number, number]> }> {
  const protectedVolume = await ProtectedVolume.open({ store, source: volume.source, drl: volume.drl });
  store.reset();
  let written = 0;
  let writes = 0;
  const curve: Array<[number, number]> = [];
  const start = Date.now();
  try {
    for (let i = 1; i <= intervals; i++) {
      const pending: Array<Promise<void>> = [];
      for (let n = 0; n < perInterval; n++) {
        const w = next();
        pending.push(protectedVolume.write(w.offset, randomFillSync(Buffer.allocUnsafe(w.length)), false));
        written += w.length;
        writes++;
        if (pending.length >= 32) await Promise.all(pending.splice(0));
      }
      await Promise.all(pending);
      await protectedVolume.sealAndShip();
      if (i % 30 === 0) {
        const ratio = (store.byKind.get('packs')?.putBytes ?? 0) / written;
        curve.push([i, ratio]);
        log(`  replay: ${i} of ${intervals} intervals, packs/written ${fmt(ratio)}`);
      }
    }
  } finally {
    await protectedVolume.close();
  }
  const packs = store.byKind.get('packs')?.putBytes ?? 0;
  const meta = store.total((k) => k !== 'packs' && k !== 'status' && k !== 'locks').putBytes;
  return { written, writes, packBytes: packs, metadataBytes: meta, points: intervals, lags: [], seconds: (Date.now() - start) / 1000, curve };
}

function amplificationRows(part: string, label: string, r: RunResult, rows: PatchesRow[], target = true): void {
  const ratio = (r.packBytes + r.metadataBytes) / r.written;
  const metaPerPoint = r.metadataBytes / Math.max(1, r.points);
  // The target: uploaded ≤ 1.5 × written + 8 KiB of metadata per point.
  const allowed = 1.5 * r.written + 8192 * r.points;
  rows.push(
    row(part, `${label}: bytes uploaded / bytes written`, fmt(ratio), {
      target: target ? '<= 1.5x + 8 KiB/point' : '',
      ok: target ? check(r.packBytes + r.metadataBytes <= allowed) : '',
      note: `${r.writes} writes, ${fmt(r.written / MiB, 1)} MiB written in ${fmt(r.seconds, 1)} s; packs ${fmt(r.packBytes / MiB, 1)} MiB (${fmt(r.packBytes / r.written)}x), metadata ${fmt(r.metadataBytes / MiB, 2)} MiB`,
    }),
    row(part, `${label}: metadata bytes per point`, fmt(metaPerPoint, 0), { note: `${r.points} points; every run level, page packs included` }),
  );
}

function rpoRows(part: string, label: string, r: RunResult, o: Options, rows: PatchesRow[]): void {
  const bound = 2 * o.intervalMs;
  rows.push(
    row(part, `${label}: oldest unshipped write, median / p95 / max (ms)`, `${fmt(median(r.lags), 0)} / ${fmt(pct(r.lags, 95), 0)} / ${fmt(r.lags.at(-1) ?? 0, 0)}`, {
      target: `max < ${bound}`,
      ok: check((r.lags.at(-1) ?? 0) < bound),
      note: `${r.lags.length} samples; ${fmt(r.writes / r.seconds, 0)} writes/s achieved; ${r.points} points`,
    }),
  );
}

async function withDir<T>(o: Options, name: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(o.dir, `cdp-patches-${name}-`));
  try {
    return await fn(dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function partRandom(o: Options, rows: PatchesRow[], log: (line: string) => void): Promise<void> {
  for (const rate of o.rates) {
    await withDir(o, `random-${rate}`, async (dir) => {
      log(`random: ${rate} writes/s of 4 KiB on a ${o.randomSize / GiB} GiB volume for ${o.seconds} s…`);
      const store = new RequestCountingStore(openStore(join(dir, 'repo')));
      const volume = await thinVolume(dir, o.randomSize, store);
      const r = await realTime(store, volume, randomPattern(o.randomSize, rate), rate, o);
      amplificationRows('random', `${rate} writes/s`, r, rows);
      rpoRows('random', `${rate} writes/s`, r, o, rows);
    });
  }
}

async function partRpo(o: Options, rows: PatchesRow[], log: (line: string) => void): Promise<void> {
  for (const regionSize of o.rpoRegionSizes)
  for (const kind of ['local', 's3rver'] as const) {
    await withDir(o, `rpo-${kind}`, async (dir) => {
      const label = `1000 writes/s, ${o.rpoSize / GiB} GiB, ${regionSize / 1024} KiB regions, ${kind}`;
      log(`rpo: ${label}, for ${o.seconds} s…`);
      const server = kind === 's3rver' ? await startS3Server({ buckets: ['bench'], directory: join(dir, 's3') }) : undefined;
      const saved = { ...process.env };
      try {
        if (server !== undefined) Object.assign(process.env, s3ServerEnv(server));
        const store = new RequestCountingStore(openStore(server === undefined ? join(dir, 'repo') : 's3://bench/repo'));
        const volume = await thinVolume(dir, o.rpoSize, store, regionSize);
        const r = await realTime(store, volume, randomPattern(o.rpoSize, 7), 1000, o);
        rpoRows('rpo', label, r, o, rows);
        amplificationRows('rpo', label, r, rows);
      } finally {
        process.env = saved;
        await server?.stop();
      }
    });
  }
}

async function partSequential(o: Options, rows: PatchesRow[], log: (line: string) => void): Promise<void> {
  await withDir(o, 'sequential', async (dir) => {
    log(`sequential: 20 MiB/s of 1 MiB writes on a ${o.randomSize / GiB} GiB volume for ${o.seconds} s…`);
    const store = new RequestCountingStore(openStore(join(dir, 'repo')));
    const volume = await thinVolume(dir, o.randomSize, store);
    const r = await realTime(store, volume, sequentialPattern(o.randomSize), 20, o);
    rows.push(
      row('sequential', '1 MiB writes: pack bytes / bytes written', fmt(r.packBytes / r.written, 3), {
        target: '≈ 1.0',
        ok: check(r.packBytes / r.written <= 1.02),
        note: `${r.writes} writes; metadata ${fmt(r.metadataBytes / MiB, 2)} MiB over ${r.points} points`,
      }),
    );
  });
}

async function partMixed(o: Options, rows: PatchesRow[], log: (line: string) => void): Promise<void> {
  await withDir(o, 'mixed', async (dir) => {
    log(`mixed: 600 writes/s (pages, 80% to a hot tenth; a third log appends) on ${o.randomSize / GiB} GiB for ${o.seconds} s…`);
    const store = new RequestCountingStore(openStore(join(dir, 'repo')));
    const volume = await thinVolume(dir, o.randomSize, store);
    const r = await realTime(store, volume, mixedPattern(o.randomSize, 3), 600, o);
    amplificationRows('mixed', 'database-like, real time', r, rows, false);
    rpoRows('mixed', 'database-like, real time', r, o, rows);
  });
}

async function partReplay(o: Options, rows: PatchesRow[], log: (line: string) => void): Promise<void> {
  for (const [name, pattern, perInterval, intervals] of [
    ['random 1000/s', (size: number) => randomPattern(size, 99), 5000, o.replayRandomIntervals],
    ['database-like 600/s', (size: number) => mixedPattern(size, 4), 3000, o.replayIntervals],
  ] as const) {
    const minutes = (intervals * o.intervalMs) / 60_000;
    await withDir(o, 'replay', async (dir) => {
      log(`replay: ${name}, ${intervals} intervals (${fmt(minutes, 0)} minutes' worth) on ${o.randomSize / GiB} GiB…`);
      const store = new RequestCountingStore(openStore(join(dir, 'repo')));
      const volume = await thinVolume(dir, o.randomSize, store);
      const r = await replay(store, volume, pattern(o.randomSize), perInterval, intervals, log);
      amplificationRows('replay', `${name}, ${fmt(minutes, 0)} min replayed`, r, rows, false);
      rows.push(row('replay', `${name}: packs / written after n intervals`, r.curve.map(([i, x]) => `${i}:${fmt(x)}`).join(' '), { note: 'grows as regions reach the chain bound and are stored whole again' }));
    });
  }
}

/**
 * Point 1 of `image` in `repo`, then sixteen points each writing one block of every region (the
 * longest chains the default limits allow: 16 patches of 4 KiB on every region), with --changed.
 */
async function patchedChain(repo: string, image: string, dir: string, env: NodeJS.ProcessEnv): Promise<void> {
  await cdp(['--repo', repo, 'init', '--from', image], env);
  await cdp(['--repo', repo, 'backup', image], env);
  const { size } = await stat(image);
  const block = Buffer.alloc(BLOCK);
  for (let round = 0; round < 16; round++) {
    const lines: string[] = [];
    const handle = await open(image, 'r+');
    try {
      for (let region = 0; region < size / MiB; region++) {
        const offset = region * MiB + ((round * 7 + region) % 256) * BLOCK;
        await handle.write(randomFillSync(block), 0, BLOCK, offset);
        lines.push(`${offset} ${BLOCK}`);
      }
    } finally {
      await handle.close();
    }
    await writeFile(join(dir, 'changed.txt'), `${lines.join('\n')}\n`);
    await cdp(['--repo', repo, 'backup', image, '--changed', join(dir, 'changed.txt')], env);
  }
}

async function partRestore(o: Options, rows: PatchesRow[], log: (line: string) => void): Promise<void> {
  await withDir(o, 'restore', async (dir) => {
    const original = join(dir, 'original.img');
    const file = await open(original, 'w');
    try {
      const chunk = Buffer.alloc(MiB);
      for (let at = 0; at < o.restoreSize; at += MiB) await file.write(randomFillSync(chunk), 0, MiB, at);
    } finally {
      await file.close();
    }
    const server = await startS3Server({ buckets: ['bench'], directory: join(dir, 's3') });
    try {
      for (const kind of ['local store', 's3rver'] as const) {
        log(`restore, ${kind}: a ${o.restoreSize / MiB} MiB image with 16 patches on every region, and stored whole…`);
        const env = kind === 's3rver' ? { ...process.env, ...s3ServerEnv(server) } : process.env;
        const repo = (name: string): string => (kind === 's3rver' ? `s3://bench/${name}` : join(dir, name));
        const image = join(dir, 'disk.img');
        await copyFile(original, image);
        await patchedChain(repo('patched'), image, dir, env);
        await cdp(['--repo', repo('whole'), 'init', '--from', image], env);
        await cdp(['--repo', repo('whole'), 'backup', image], env);
        const target = join(dir, 'restored.img');
        const restore = (name: string): Promise<number> =>
          medianOf(o.runs, async () => {
            await rm(target, { force: true });
            return (await cdp(['--repo', repo(name), 'restore', '--at', 'latest', '--to', target], env)).seconds;
          });
        const whole = await restore('whole');
        const patched = await restore('patched');
        const plan = (await cdp(['--repo', repo('patched'), 'restore', '--at', 'latest', '--to', join(dir, 'never.img'), '--dry-run'], env)).json;
        rows.push(
          row('restore', `${kind}: restore throughput, 16 patches a region / stored whole (${o.restoreSize / MiB} MiB)`, fmt(whole / patched), {
            target: '>= 0.8x',
            ok: check(whole / patched >= 0.8),
            note: `whole ${fmt(whole, 3)} s, patched ${fmt(patched, 3)} s; the patched restore: ${String(plan['requests'])} GETs, ${fmt(Number(plan['downloadBytes']) / MiB, 1)} MiB`,
          }),
        );
        await rm(image, { force: true });
      }
    } finally {
      await server.stop();
    }
  });
}

const PARTS: Record<string, (o: Options, rows: PatchesRow[], log: (line: string) => void) => Promise<void>> = {
  random: partRandom,
  rpo: partRpo,
  sequential: partSequential,
  mixed: partMixed,
  replay: partReplay,
  restore: partRestore,
};

export async function runPatchesBench(argv: string[], log: (line: string) => void): Promise<PatchesRow[]> {
  const o: Options = {
    parts: option(argv, '--parts', ALL_PARTS.join(',')).split(','),
    rates: option(argv, '--rates', '100,1000').split(',').map(Number),
    seconds: Number(option(argv, '--seconds', '60')),
    intervalMs: Number(option(argv, '--interval-ms', '5000')),
    randomSize: parseSize(option(argv, '--size', '16GiB'), '--size'),
    rpoSize: parseSize(option(argv, '--rpo-size', '64GiB'), '--rpo-size'),
    rpoRegionSizes: option(argv, '--rpo-region-sizes', '1MiB,256KiB').split(',').map((v) => parseSize(v, '--rpo-region-sizes')),
    replayIntervals: Number(option(argv, '--replay-intervals', '360')),
    replayRandomIntervals: Number(option(argv, '--replay-random-intervals', '60')),
    restoreSize: parseSize(option(argv, '--restore-size', '512MiB'), '--restore-size'),
    runs: Number(option(argv, '--runs', '3')),
    dir: option(argv, '--dir', tmpdir()),
  };
  const rows: PatchesRow[] = [];
  for (const part of o.parts) {
    const fn = PARTS[part];
    if (fn === undefined) throw new Error(`unknown part ${part}: choose from ${ALL_PARTS.join(', ')}`);
    await fn(o, rows, log);
  }
  return rows;
}

export function renderPatchesBench(rows: PatchesRow[]): string {
  return table(
    ['part', 'measure', 'value', 'target', 'ok', 'note'],
    rows.map((r) => [r.part, r.measure, r.value, r.target, r.ok, r.note]),
  );
}
