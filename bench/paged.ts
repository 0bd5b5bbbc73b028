// `npm run bench -- paged [--json] [--parts base,meta,protect,rss,log,regress] [options]`: issue
// 10's targets for format 2 (paged maps, spans), each against a baseline or a count measured in
// the same run:
//
//  base     base backup of a 1 TiB sparse file holding 1 GiB in scattered extents (local store)
//           vs `cp --sparse=always FILE /dev/null`; bytes read, metadata stored; then the
//           incremental with nothing changed: time, and its store requests (in-process, counted).
//  meta     metadata uploaded per point in time on a 1 TiB volume, ~100 changed regions per point
//           at random: the real commit path (Repository.commitDelta, which writes the spans) fed
//           by RunBuilder with synthetic entries (fake pack keys, no region data), through a
//           counting store over a directory on tmpfs; bytes and requests per object kind.
//  protect  the same through the real protect path: ProtectedVolume on a 1 TiB sparse image,
//           ~100 random 4 KiB writes and sealAndShip() per interval, packs counted and dropped.
//  rss      peak RSS (GNU time -v) and seconds of the CLI commands on a 15 TiB sparse image:
//           backup (base, incremental), restore --to FILE, serve read by qemu-io, protect
//           written by qemu-io then SIGTERM.
//  log      a chain of 20,000 points (library writer, a few regions each, local store): `log`'s
//           store requests (in-process, counted) and the CLI's wall time; choosing a point by
//           time for restore (requests, and the CLI's `restore --at TIME --dry-run`).
//  regress  no regression: restore from s3rver vs `aws s3 cp` of the same bytes; scan of a
//           page-cached image vs `openssl dgst -sha256`; `verify --read-data` vs
//           `restic check --read-data` of the same image over the same (TLS) s3rver.
//
// Sizes and counts are options (see parseOptions). Times are medians of --runs runs.

import { spawn } from 'node:child_process';
import { randomBytes, randomFillSync } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, open, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/cli/units.js';
import { backup } from '../src/core/backup.js';
import { init } from '../src/core/init.js';
import { log as logCore } from '../src/core/log.js';
import { parsePointSelector } from '../src/core/points.js';
import { ProtectedVolume } from '../src/core/protect.js';
import { planRestore, planTotals } from '../src/core/restore.js';
import { seededRandom } from '../src/demo/sample-image.js';
import { s3ServerEnv, startS3Server } from '../src/dev/s3-server.js';
import { newConfig } from '../src/repo/config.js';
import { wholeAt } from '../src/model/regions.js';
import { packKey } from '../src/repo/keys.js';
import { encodeProtectStatus, protectStatusKey } from '../src/repo/protect-status.js';
import { Repository } from '../src/repo/repository.js';
import { RunBuilder } from '../src/repo/run-builder.js';
import { openStore } from '../src/store/open.js';
import type { ObjectStore } from '../src/store/types.js';
import { type KindCounts, RequestCountingStore, requests } from './counting-store.js';
import { median, option, table } from './harness.js';
import { AWS, CLI, cdp, medianOf, run, seconds, writeImage } from './workload.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

export interface PagedRow {
  part: string;
  measure: string;
  /** A count, bytes or seconds (the unit is in the measure or the value). */
  value: string;
  baseline: string;
  ratio: string;
  target: string;
  /** '✓' met, '✗' missed, '' nothing to meet. */
  ok: string;
  note: string;
}

interface Options {
  parts: Set<string>;
  runs: number;
  dir: string;
  tmpfs: string;
  baseSize: number;
  baseData: number;
  baseExtent: number;
  baseAlign: number;
  metaSize: number;
  metaPoints: number;
  metaChanges: number;
  protectIntervals: number;
  protectWrites: number;
  rssSize: number;
  rssWrites: number;
  logPoints: number;
  logRegions: number;
  s3Size: number;
  scanSize: number;
}

const ALL_PARTS = ['base', 'meta', 'protect', 'rss', 'log', 'regress'];

function parseOptions(argv: string[]): Options {
  const size = (name: string, fallback: string): number => parseSize(option(argv, name, fallback), name);
  const count = (name: string, fallback: string): number => {
    const n = Number(option(argv, name, fallback));
    if (!Number.isInteger(n) || n < 1) throw new Error(`${name} must be a positive integer`);
    return n;
  };
  const parts = option(argv, '--parts', ALL_PARTS.join(',')).split(',').filter((p) => p !== '');
  for (const p of parts) if (!ALL_PARTS.includes(p)) throw new Error(`unknown part ${p}: choose from ${ALL_PARTS.join(', ')}`);
  return {
    parts: new Set(parts),
    runs: count('--runs', '3'),
    dir: option(argv, '--dir', tmpdir()),
    tmpfs: option(argv, '--tmpfs', '/dev/shm'),
    baseSize: size('--base-size', '1TiB'),
    baseData: size('--base-data', '1GiB'),
    baseExtent: size('--base-extent', '1MiB'),
    baseAlign: size('--base-align', '1MiB'),
    metaSize: size('--meta-size', '1TiB'),
    metaPoints: count('--meta-points', '4096'),
    metaChanges: count('--meta-changes', '100'),
    protectIntervals: count('--protect-intervals', '255'),
    protectWrites: count('--protect-writes', '100'),
    rssSize: size('--rss-size', '15TiB'),
    rssWrites: count('--rss-writes', '16'),
    logPoints: count('--log-points', '20000'),
    logRegions: count('--log-regions', '3'),
    s3Size: size('--s3-size', '512MiB'),
    scanSize: size('--scan-size', '2GiB'),
  };
}

// ---- small helpers ------------------------------------------------------------------------

const fmt = (x: number, digits = 2): string => x.toFixed(digits);
const ratioText = (x: number): string => `${x.toFixed(2)}x`;
const check = (ok: boolean): string => (ok ? '✓' : '✗');
function bytesText(n: number): string {
  for (const [unit, size] of [['TiB', TiB], ['GiB', GiB], ['MiB', MiB], ['KiB', KiB]] as const) {
    if (n >= size) return `${Number((n / size).toFixed(1))} ${unit}`;
  }
  return `${Math.round(n)} B`;
}

function row(part: string, measure: string, value: string, fields: Partial<Omit<PagedRow, 'part' | 'measure' | 'value'>> = {}): PagedRow {
  return { part, measure, value, baseline: fields.baseline ?? '', ratio: fields.ratio ?? '', target: fields.target ?? '', ok: fields.ok ?? '', note: fields.note ?? '' };
}

/** `count` distinct random multiples of `align` in [0, size - length]. */
function scatteredOffsets(rand: () => number, count: number, size: number, length: number, align: number): number[] {
  const slots = Math.floor((size - length) / align) + 1;
  if (count > slots) throw new Error(`cannot place ${count} extents of ${length} bytes in ${size} bytes`);
  const chosen = new Set<number>();
  while (chosen.size < count) chosen.add(Math.floor(rand() * slots));
  // Extents that overlap (unaligned ones can) are fine: the data is what the file holds after.
  return [...chosen].sort((a, b) => a - b).map((slot) => slot * align);
}

/** A sparse file of `size` bytes holding random bytes at `offsets` (`length` each). */
async function sparseImage(path: string, size: number, offsets: number[], length: number): Promise<void> {
  await writeFile(path, '');
  await truncate(path, size);
  const file = await open(path, 'r+');
  const bytes = Buffer.alloc(length);
  try {
    for (const at of offsets) {
      randomFillSync(bytes);
      await file.write(bytes, 0, length, at);
    }
  } finally {
    await file.close();
  }
}

function countsText(c: KindCounts): string {
  const ideal = c.listPagesIfStartAfter === c.listPages ? '' : ` (${c.listPagesIfStartAfter} if StartAfter reached the server)`;
  return `${c.puts} PUT, ${c.gets} GET, ${c.heads} HEAD, ${c.listPages} LIST${ideal}, ${c.deletes} DELETE`;
}

function byKindText(store: RequestCountingStore, skip: (kind: string) => boolean = () => false): string {
  return [...store.byKind]
    .filter(([kind, c]) => !skip(kind) && requests(c) > 0)
    .sort(([a], [b]) => (a < b ? -1 : 1))
    .map(([kind, c]) => {
      const parts = [c.puts && `${c.puts} PUT`, c.gets && `${c.gets} GET`, c.heads && `${c.heads} HEAD`, c.listPages && `${c.listPages} LIST`, c.deletes && `${c.deletes} DEL`].filter(Boolean);
      return `${kind}: ${parts.join(' ')}`;
    })
    .join('; ');
}

/** The bytes of qemu-io `read -v` dumps, in order ("OFFSET:  hh hh … hh  ascii" lines). */
function parseQemuDump(stdout: string): Buffer {
  const bytes: number[] = [];
  for (const line of stdout.split('\n')) {
    const match = /^[0-9a-f]{8,}:\s+((?:[0-9a-f]{2}\s){1,16})/.exec(line);
    if (match !== null) for (const h of match[1]!.trim().split(/\s+/)) bytes.push(parseInt(h, 16));
  }
  return Buffer.from(bytes);
}

/** GNU time -v output: peak RSS (MiB) and wall seconds. */
function parseTimeV(stderr: string): { rssMiB: number; seconds: number } {
  const kb = Number(/Maximum resident set size \(kbytes\): (\d+)/.exec(stderr)?.[1]);
  const wall = /Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):(\d+(?:\.\d+)?)/.exec(stderr);
  const secondsWall = wall === null ? Number.NaN : Number(wall[1] ?? 0) * 3600 + Number(wall[2]) * 60 + Number(wall[3]);
  if (!Number.isFinite(kb)) throw new Error(`no RSS in GNU time's output: ${stderr.slice(-500)}`);
  return { rssMiB: kb / 1024, seconds: secondsWall };
}

/** One CLI run under GNU time -v. */
async function timedCli(args: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ rssMiB: number; seconds: number; json: Record<string, unknown> }> {
  const { stdout, stderr } = await run('/usr/bin/time', ['-v', process.execPath, CLI, '--json', ...args], { env, maxBuffer: 256 * MiB });
  return { ...parseTimeV(stderr), json: JSON.parse(stdout) as Record<string, unknown> };
}

/**
 * A long-running CLI command (serve, protect) under GNU time -v: started, its JSON line awaited,
 * then `during` runs, then the command gets `signal` (GNU time ignores it and does not pass it
 * on, so it goes to time's child, the node process, found by parent pid).
 */
async function timedServer(
  args: string[],
  signal: NodeJS.Signals,
  during: (json: Record<string, unknown>) => Promise<void>,
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ rssMiB: number; seconds: number; stderr: string }> {
  const child = spawn('/usr/bin/time', ['-v', process.execPath, CLI, '--json', ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  let nodePid: number | undefined;
  try {
    let json: Record<string, unknown> | undefined;
    while (json === undefined) {
      if (child.exitCode !== null) throw new Error(`${args.join(' ')} exited: ${stderr}`);
      try {
        json = JSON.parse(stdout) as Record<string, unknown>;
      } catch {
        await new Promise((r) => setTimeout(r, 10));
      }
    }
    const children = (await readFile(`/proc/${child.pid}/task/${child.pid}/children`, 'utf8')).trim().split(/\s+/);
    nodePid = Number(children[0]);
    await during(json);
  } finally {
    if (nodePid !== undefined) process.kill(nodePid, signal);
    else child.kill('SIGKILL');
  }
  const code = await exited;
  if (code !== 0) throw new Error(`${args.join(' ')} exited ${code}: ${stderr.slice(-2000)}`);
  return { ...parseTimeV(stderr), stderr };
}

// ---- the synthetic writer -----------------------------------------------------------------

export interface ChainOptions {
  points: number;
  /** Regions changed per point, scattered at random over the volume. */
  changes: number;
  seed: number;
  /** End time of point 1 (ms); each point ends 1 s after the one before. */
  t0: number;
  progress?: (seq: number) => void;
}

/**
 * Appends `points` deltas of random entries (fake pack keys: nothing reads region data) through
 * RunBuilder and Repository.commitDelta, the writers' commit path, which also writes the spans.
 */
export async function syntheticChain(repo: Repository, store: ObjectStore, o: ChainOptions): Promise<void> {
  const rand = seededRandom(o.seed);
  const regionCount = repo.geometry.regionCount;
  const index = await repo.index();
  const source = { host: hostname(), path: '/dev/vdb' };
  const first = index.latest + 1;
  for (let seq = first; seq < first + o.points; seq++) {
    const builder = new RunBuilder(store, seq, repo.context, { inlineEntries: repo.inlineEntries });
    const regions = new Set<number>();
    while (regions.size < Math.min(o.changes, regionCount)) regions.add(Math.floor(rand() * regionCount));
    const pack = packKey(seq, (Math.floor(rand() * 2 ** 32) >>> 0).toString(16).padStart(8, '0'));
    const digests = randomBytes(32 * regions.size);
    let i = 0;
    for (const region of [...regions].sort((a, b) => a - b)) {
      await builder.set(region, wholeAt({ pack, offset: 16 + i * (repo.geometry.regionSize + 1), length: repo.geometry.regionSize + 1 }), digests.subarray(32 * i, 32 * i + 32));
      i++;
    }
    const pages = await builder.finish();
    const end = o.t0 + (seq - 1) * 1000;
    await repo.commitDelta({ seq, info: { kind: seq === 1 ? 'base' : 'host', start: end - 500, end, storedBytes: regions.size * repo.geometry.regionSize, source }, pages }, index);
    o.progress?.(seq);
  }
}

// ---- part 1: base backup of a 1 TiB sparse file ---------------------------------------------

async function partBase(o: Options, rows: PagedRow[], log: (line: string) => void): Promise<void> {
  const dir = await mkdtemp(join(o.dir, 'cdp-paged-base-'));
  try {
    const image = join(dir, 'sparse.img');
    const extents = Math.round(o.baseData / o.baseExtent);
    log(`base: a ${bytesText(o.baseSize)} sparse file with ${extents} extents of ${bytesText(o.baseExtent)} (aligned to ${bytesText(o.baseAlign)})…`);
    await sparseImage(image, o.baseSize, scatteredOffsets(seededRandom(21), extents, o.baseSize, o.baseExtent, o.baseAlign), o.baseExtent);
    await run('sync');
    await seconds('cp', ['--sparse=always', image, '/dev/null']); // page cache warm for both
    const cpNull = await medianOf(o.runs, () => seconds('cp', ['--sparse=always', image, '/dev/null']));
    const copy = join(dir, 'copy.img');
    const cpFile = await medianOf(o.runs, async () => {
      await rm(copy, { force: true });
      await run('sync');
      return seconds('sh', ['-c', `cp --sparse=always '${image}' '${copy}' && sync '${copy}'`]);
    });
    await rm(copy, { force: true });

    let json: Record<string, unknown> = {};
    let repo = '';
    const base = await medianOf(o.runs, async (i) => {
      repo = join(dir, `repo-${i}`);
      await rm(join(dir, `repo-${i - 1}`), { recursive: true, force: true });
      await cdp(['--repo', repo, 'init', '--from', image]);
      await run('sync');
      const r = await cdp(['--repo', repo, 'backup', image]);
      json = r.json;
      return r.seconds;
    });
    const scanned = Number(json['bytesScanned']);
    const data = extents * o.baseExtent;
    rows.push(
      row('base', `base backup, ${bytesText(o.baseSize)} sparse, ${bytesText(data)} data (CLI, s)`, fmt(base, 3), {
        baseline: `cp --sparse=always F /dev/null ${fmt(cpNull, 3)} s`,
        ratio: ratioText(base / cpNull),
        target: '<= 2x',
        ok: check(base / cpNull <= 2),
        note: `${ratioText(base / cpFile)} of cp --sparse=always to a file + sync (${fmt(cpFile, 3)} s); cp to /dev/null writes the holes as zeros`,
      }),
      row('base', 'bytes read from the source (bytesScanned)', String(scanned), {
        baseline: `data ${data}`,
        ratio: ratioText(scanned / data),
        target: 'only the extents',
        ok: check(scanned <= Math.ceil(data / MiB) * 2 * MiB),
        note: `dataRegions ${String(json['dataRegions'])}, regionsChanged ${String(json['regionsChanged'])}, stored ${String(json['bytesStored'])} B in ${String(json['packs'])} packs`,
      }),
      row('base', 'metadata bytes stored by the base', String(json['metadataBytes']), {
        note: `${fmt(Number(json['metadataBytes']) / Number(json['dataRegions']), 1)} B per data region`,
      }),
    );

    const incremental = await medianOf(o.runs, async () => (await cdp(['--repo', repo, 'backup', image])).seconds);
    const counting = new RequestCountingStore(openStore(repo));
    const inc = await backup({ store: counting, source: image });
    const total = counting.total((k) => k !== 'packs');
    rows.push(
      row('base', 'incremental, nothing changed (CLI, s)', fmt(incremental, 3), {
        baseline: `base ${fmt(base, 3)} s`,
        ratio: ratioText(incremental / base),
        note: `reads the extents again (${inc.bytesScanned} B, no DRL); regionsChanged ${inc.regionsChanged}`,
      }),
      row('base', 'incremental, nothing changed: store requests', String(requests(counting.total())), {
        note: `${countsText(counting.total())}; metadata PUT ${total.putBytes} B; ${byKindText(counting)}`,
      }),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---- part 2: metadata per point, library writer --------------------------------------------

const RUN_KINDS = ['deltas', 'spans/01', 'spans/02', 'spans/03', 'spans/04', 'spans/05'];

function metadataRows(part: string, label: string, store: RequestCountingStore, points: number, rows: PagedRow[], extraKinds: string[] = []): number {
  const per = (n: number): number => n / points;
  let total = 0;
  for (const kind of RUN_KINDS) {
    const c = store.byKind.get(kind);
    const pages = store.pageBytesByRun.get(kind) ?? 0;
    if (c === undefined || c.puts === 0) continue;
    const bytes = c.putBytes + pages;
    rows.push(
      row(part, `${label}: ${kind}/ roots${pages > 0 ? ' + their page packs' : ''}, B/point`, fmt(per(bytes), 0), {
        note: `${c.puts} roots, ${c.putBytes} B${pages > 0 ? ` + ${pages} B of page packs` : ''}`,
      }),
    );
  }
  const pagePacks = store.byKind.get('pages');
  if (pagePacks !== undefined) {
    rows.push(row(part, `${label}: pages/ (page packs, all levels), B/point`, fmt(per(pagePacks.putBytes), 0), { note: `${pagePacks.puts} page packs, ${pagePacks.putBytes} B (counted in the rows above)` }));
  }
  for (const kind of extraKinds) {
    const c = store.byKind.get(kind);
    if (c !== undefined && c.puts > 0) rows.push(row(part, `${label}: ${kind}/, B/point`, fmt(per(c.putBytes), 0), { note: `${c.puts} PUTs, ${c.putBytes} B` }));
  }
  const meta = store.total((k) => k !== 'packs');
  total = meta.putBytes;
  rows.push(
    row(part, `${label}: metadata PUT bytes per point (all but packs)`, fmt(per(total), 0), {
      baseline: 'format 1: ~2.6 MB',
      ratio: ratioText(per(total) / 2.6e6),
      target: '<= 65536 B',
      ok: check(per(total) <= 65536),
      note: `${total} B over ${points} points`,
    }),
    row(part, `${label}: requests per point (all but packs)`, fmt(per(requests(meta)), 3), {
      note: `PUT ${fmt(per(meta.puts), 3)}, GET ${fmt(per(meta.gets), 3)}, HEAD ${fmt(per(meta.heads), 3)}, LIST ${fmt(per(meta.listPages), 3)} (${fmt(per(meta.listPagesIfStartAfter), 3)} if StartAfter reached the server), DELETE ${fmt(per(meta.deletes), 3)}`,
    }),
  );
  return per(total);
}

async function partMeta(o: Options, rows: PagedRow[], log: (line: string) => void): Promise<void> {
  const dir = await mkdtemp(join(o.tmpfs, 'cdp-paged-meta-'));
  try {
    const counting = new RequestCountingStore(openStore(join(dir, 'repo')));
    const repo = await Repository.init(counting, newConfig({ volumeSize: o.metaSize }));
    counting.reset();
    const start = Date.now();
    log(`meta: ${o.metaPoints} points of ${o.metaChanges} random regions on ${bytesText(o.metaSize)} (${repo.geometry.regionCount} regions)…`);
    await syntheticChain(repo, counting, {
      points: o.metaPoints,
      changes: o.metaChanges,
      seed: 31,
      t0: Date.UTC(2026, 0, 1),
      progress: (seq) => {
        if (seq % 4096 === 0) log(`  ${seq} points, ${fmt((Date.now() - start) / 1000, 1)} s`);
      },
    });
    const wall = (Date.now() - start) / 1000;
    const perPoint = metadataRows('meta', `${o.metaPoints} points`, counting, o.metaPoints, rows);
    const fanout = repo.fanout;
    const levels = Math.floor(Math.log(o.metaPoints) / Math.log(fanout) + 1e-9);
    if (levels < 4) {
      // A level-4 span is a whole map every fanout^4 points: about the volume's distinct regions
      // after that many points, at the bytes per entry the level-3 spans cost here.
      const l3 = counting.byKind.get('spans/03');
      if (l3 !== undefined && l3.puts > 0) {
        const l3bytes = l3.putBytes + (counting.pageBytesByRun.get('spans/03') ?? 0);
        const regions = repo.geometry.regionCount;
        const perL3 = regions * (1 - Math.exp((-o.metaChanges * fanout ** 3) / regions));
        const perL4 = regions * (1 - Math.exp((-o.metaChanges * fanout ** 4) / regions));
        const bytesPerEntry = l3bytes / l3.puts / perL3;
        const l4PerPoint = (bytesPerEntry * perL4) / fanout ** 4;
        rows.push(
          row('meta', 'projected: spans/04 share, B/point (a whole map every 65536 points)', fmt(l4PerPoint, 0), {
            target: '<= 65536 B total',
            ok: check(perPoint + l4PerPoint <= 65536),
            note: `~${Math.round(perL4)} entries x ${fmt(bytesPerEntry, 1)} B (level 3's B/entry) / 65536; total with it ${fmt(perPoint + l4PerPoint, 0)} B/point`,
          }),
        );
      }
    }
    rows.push(row('meta', 'library writer wall time per point (ms)', fmt((wall * 1000) / o.metaPoints, 2), { note: `${fmt(wall, 1)} s for ${o.metaPoints} points, store on ${o.tmpfs}` }));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---- part 2b: metadata per point through ProtectedVolume -----------------------------------

async function partProtect(o: Options, rows: PagedRow[], log: (line: string) => void): Promise<void> {
  const dir = await mkdtemp(join(o.dir, 'cdp-paged-protect-'));
  const fast = await mkdtemp(join(o.tmpfs, 'cdp-paged-protect-'));
  try {
    const image = join(dir, 'disk.img');
    await writeFile(image, '');
    await truncate(image, o.metaSize);
    const store = openStore(join(fast, 'repo'));
    await init({ store, from: image });
    await backup({ store, source: image });
    const fanout = (await Repository.open(store)).fanout;
    const counting = new RequestCountingStore(store, (key) => key.startsWith('packs/'));
    const volume = await ProtectedVolume.open({ store: counting, source: image, drl: join(fast, 'disk.drl'), spoolDir: join(fast, 'spool') });
    const opened = requests(counting.total());
    counting.reset();
    const rand = seededRandom(41);
    const bytes = Buffer.alloc(4096);
    const statusKey = protectStatusKey(image);
    let regions = 0;
    const shipTimes: number[] = [];
    let slowest = { ms: 0, seq: 0 };
    const start = Date.now();
    log(`protect: ${o.protectIntervals} intervals of ${o.protectWrites} random 4 KiB writes on ${bytesText(o.metaSize)}, sealAndShip() each…`);
    try {
      for (let i = 0; i < o.protectIntervals; i++) {
        for (let w = 0; w < o.protectWrites; w++) {
          randomFillSync(bytes);
          await volume.write(Math.floor(rand() * (o.metaSize / 4096)) * 4096, bytes, false);
        }
        const t = Date.now();
        const shipped = await volume.sealAndShip();
        const took = Date.now() - t;
        shipTimes.push(took);
        if (took > slowest.ms && shipped !== undefined) slowest = { ms: took, seq: shipped.seq };
        if (shipped === undefined) throw new Error(`interval ${i}: the shipment failed (${volume.status().lastShipError})`);
        regions += shipped.regions;
        // What protect() puts at every tick besides the delta: its status report.
        await counting.put(statusKey, encodeProtectStatus({ ...volume.status(), running: true, updated: Date.now(), intervalMs: 5000, source: image, host: hostname(), pid: process.pid }));
        if ((i + 1) % 64 === 0) log(`  ${i + 1} intervals, ${fmt((Date.now() - start) / 1000, 1)} s`);
      }
    } finally {
      await volume.close();
    }
    const wall = (Date.now() - start) / 1000;
    const n = o.protectIntervals;
    metadataRows('protect', `protect, ${n} intervals`, counting, n, rows, ['status', 'locks', 'marks']);
    const packs = counting.byKind.get('packs');
    rows.push(
      row('protect', 'protect: sealAndShip() ms, median / slowest', `${fmt(median(shipTimes), 0)} / ${slowest.ms}`, {
        note: `slowest is point ${slowest.seq}${slowest.seq % fanout === 0 ? ' (spans due)' : ''}; local tmpfs store, so GETs cost no latency here`,
      }),
      row('protect', 'protect: regions shipped per interval', fmt(regions / n, 1), {
        note: `packs: ${packs?.puts ?? 0} PUTs, ${bytesText(packs?.putBytes ?? 0)} (counted, dropped); open cost ${opened} requests; ${fmt(wall, 1)} s in all; ${byKindText(counting, (k) => k === 'packs')}`,
      }),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
    await rm(fast, { recursive: true, force: true });
  }
}

// ---- part 3: peak RSS on a 15 TiB sparse image ---------------------------------------------

async function partRss(o: Options, rows: PagedRow[], log: (line: string) => void): Promise<void> {
  if (!existsSync('/usr/bin/time')) {
    log('rss: /usr/bin/time not found (apt-get install time): skipped');
    return;
  }
  const dir = await mkdtemp(join(o.dir, 'cdp-paged-rss-'));
  try {
    const image = join(dir, 'disk.img');
    const rand = seededRandom(51);
    const offsets = scatteredOffsets(rand, o.rssWrites, o.rssSize, 4096, 4096);
    log(`rss: a ${bytesText(o.rssSize)} sparse image with ${o.rssWrites} scattered 4 KiB writes…`);
    await sparseImage(image, o.rssSize, offsets, 4096);
    const repo = join(dir, 'repo');
    await cdp(['--repo', repo, 'init', '--from', image]);
    const limit = 300;
    const add = (measure: string, r: { rssMiB: number; seconds: number }, note: string): void => {
      rows.push(row('rss', measure, `${fmt(r.rssMiB, 0)} MiB`, { target: `<= ${limit} MB`, ok: check(r.rssMiB * 1.048576 <= limit), note: `${fmt(r.seconds, 2)} s; ${note}` }));
    };
    const b1 = await timedCli(['--repo', repo, 'backup', image]);
    add('peak RSS, backup (base)', b1, `read ${String(b1.json['bytesScanned'])} B, ${String(b1.json['dataRegions'])} data regions`);
    // A few more writes, then the incremental.
    const more = scatteredOffsets(rand, Math.max(1, o.rssWrites >> 2), o.rssSize, 4096, 4096);
    const file = await open(image, 'r+');
    for (const at of more) await file.write(randomBytes(4096), 0, 4096, at);
    await file.close();
    const b2 = await timedCli(['--repo', repo, 'backup', image]);
    add('peak RSS, backup (incremental)', b2, `read ${String(b2.json['bytesScanned'])} B, ${String(b2.json['regionsChanged'])} regions changed`);
    const restored = join(dir, 'restored.img');
    const r = await timedCli(['--repo', repo, 'restore', '--at', 'latest', '--to', restored]);
    const probe = Buffer.alloc(4096);
    const image4k = Buffer.alloc(4096);
    const a = await open(image, 'r');
    const b = await open(restored, 'r');
    for (const at of [...offsets, ...more]) {
      await a.read(image4k, 0, 4096, at);
      await b.read(probe, 0, 4096, at);
      if (!probe.equals(image4k)) throw new Error(`restored image differs at ${at}`);
    }
    await a.close();
    await b.close();
    const allocated = Number((await run('du', ['-B1', restored])).stdout.split('\t')[0]);
    add('peak RSS, restore --to FILE', r, `wrote ${String(r.json['dataRegions'] ?? '?')} data regions; file allocates ${bytesText(allocated)}; spot-checked every write`);
    await rm(restored, { force: true });

    // serve, read by qemu-io: written 4 KiB blocks (dumped and compared with the image) and a
    // few holes (qemu-io checks they read as zeros).
    const reads = [...offsets.slice(0, 8), ...more.slice(0, 2)];
    const holes = [0, 1, 2, 3].map((k) => Math.floor(((k + 0.5) * o.rssSize) / 4 / MiB) * MiB);
    let qemuSeconds = 0;
    const s = await timedServer(['--repo', repo, 'serve', '--at', 'latest', '--listen', '127.0.0.1:0'], 'SIGINT', async (json) => {
      const url = `nbd://127.0.0.1:${String(json['port'])}`;
      const commands = [...reads.flatMap((at) => ['-c', `read -v ${at} 4096`]), ...holes.flatMap((at) => ['-c', `read -P 0 ${at} 1M`])];
      const startQ = process.hrtime.bigint();
      const { stdout } = await run('qemu-io', ['-r', '-f', 'raw', url, ...commands], { maxBuffer: 64 * MiB });
      qemuSeconds = Number(process.hrtime.bigint() - startQ) / 1e9;
      if (/Pattern verification failed|error|failed/i.test(stdout)) throw new Error(`qemu-io through serve: ${stdout.slice(0, 2000)}`);
      const served = parseQemuDump(stdout);
      const expected = Buffer.alloc(4096 * reads.length);
      const src = await open(image, 'r');
      for (const [k, at] of reads.entries()) await src.read(expected, 4096 * k, 4096, at);
      await src.close();
      if (!served.equals(expected)) throw new Error(`serve returned other bytes than the image (${served.length} bytes dumped, ${expected.length} expected)`);
    });
    add('peak RSS, serve --at latest (qemu-io reads)', s, `qemu-io: ${reads.length} data blocks (compared) + 4 MiB of holes in ${fmt(qemuSeconds, 2)} s`);

    // protect: a few writes through qemu-io, a point shipped, then SIGTERM.
    const writes = scatteredOffsets(rand, 8, o.rssSize, 4096, 4096);
    const p = await timedServer(
      ['--repo', repo, 'protect', image, '--listen', '127.0.0.1:0', '--interval', '1s', '--drl', join(dir, 'disk.drl')],
      'SIGTERM',
      async (json) => {
        const url = `nbd://127.0.0.1:${String(json['port'])}`;
        await run('qemu-io', ['-f', 'raw', '-t', 'none', url, ...writes.flatMap((at, k) => ['-c', `write -P ${k + 1} ${at} 4096`]), '-c', 'flush']);
        await new Promise((resolve) => setTimeout(resolve, 2500)); // an interval ships them
      },
    );
    const chain = await logCore({ store: openStore(repo) });
    const shipped = chain.entries.slice(2);
    const regionsShipped = shipped.reduce((n, e) => n + e.regions, 0);
    if (regionsShipped !== writes.length) throw new Error(`protect shipped ${regionsShipped} regions, not ${writes.length}`);
    add('peak RSS, protect (8 writes via qemu-io, SIGTERM)', p, `shipped ${shipped.length} points, ${regionsShipped} regions; runs ~3.5 s by design (2.5 s wait for an interval)`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---- part 4: log and restore --at on 20,000 points -----------------------------------------

async function partLog(o: Options, rows: PagedRow[], log: (line: string) => void): Promise<void> {
  const dir = await mkdtemp(join(o.dir, 'cdp-paged-log-'));
  try {
    const repoDir = join(dir, 'repo');
    const store = openStore(repoDir);
    const repo = await Repository.init(store, newConfig({ volumeSize: TiB }));
    const t0 = Date.UTC(2026, 0, 1);
    const start = Date.now();
    log(`log: writing ${o.logPoints} points of ${o.logRegions} regions…`);
    await syntheticChain(repo, store, { points: o.logPoints, changes: o.logRegions, seed: 61, t0 });
    log(`  ${fmt((Date.now() - start) / 1000, 1)} s`);

    const counting = new RequestCountingStore(openStore(repoDir));
    const result = await logCore({ store: counting });
    if (result.entries.length !== o.logPoints) throw new Error(`log lists ${result.entries.length} points, not ${o.logPoints}`);
    const logReq = requests(counting.total());
    rows.push(
      row('log', `log of ${o.logPoints} points: store requests (in-process)`, String(logReq), {
        target: '<= 60',
        ok: check(logReq <= 60),
        note: `${countsText(counting.total())}; ${byKindText(counting)}`,
      }),
    );
    const cliLog = await medianOf(o.runs, async () => {
      const t = process.hrtime.bigint();
      await run(process.execPath, [CLI, '--repo', repoDir, '--json', 'log'], { maxBuffer: 512 * MiB });
      return Number(process.hrtime.bigint() - t) / 1e9;
    });
    const nodeStart = await medianOf(o.runs, () => seconds(process.execPath, ['-e', '0']));
    // Where the time goes: one listing of deltas/ through the local store, and readdir alone.
    const listing = await medianOf(o.runs, async () => {
      const t = process.hrtime.bigint();
      for await (const _ of openStore(repoDir).list('deltas/'));
      return Number(process.hrtime.bigint() - t) / 1e9;
    });
    const readdirOnly = await medianOf(o.runs, async () => {
      const t = process.hrtime.bigint();
      await readdir(join(repoDir, 'deltas'), { withFileTypes: true });
      return Number(process.hrtime.bigint() - t) / 1e9;
    });
    rows.push(
      row('log', `node dist/src/cli/main.js --repo DIR --json log (s)`, fmt(cliLog, 3), {
        target: '<= 2 s',
        ok: check(cliLog <= 2),
        note: `node -e 0 takes ${fmt(nodeStart, 3)} s; one local listing of deltas/ (${o.logPoints} keys) ${fmt(listing, 3)} s in-process, readdir alone ${fmt(readdirOnly, 3)} s`,
      }),
    );

    // restore --at a time: which point, and what choosing it costs.
    const wanted = Math.max(1, Math.round(o.logPoints * 0.6172));
    const at = new Date(t0 + (wanted - 1) * 1000 + 500).toISOString();
    counting.reset();
    const plan = await planRestore({ store: counting, at: parsePointSelector(at) });
    if (plan.seq !== wanted) throw new Error(`restore --at ${at} chose ${plan.seq}, not ${wanted}`);
    const choose = counting.total();
    const chooseKinds = byKindText(counting);
    counting.reset();
    const totals = await planTotals(plan);
    const fold = counting.total();
    rows.push(
      row('log', `restore --at TIME: choosing point ${wanted} of ${o.logPoints}, requests`, String(requests(choose)), {
        note: `${countsText(choose)}; ${chooseKinds}; then folding its map (--dry-run totals): ${requests(fold)} requests, ${totals.dataRegions} data regions`,
      }),
    );
    const cliRestore = await medianOf(o.runs, async () => {
      const t = process.hrtime.bigint();
      const { stdout } = await run(process.execPath, [CLI, '--repo', repoDir, '--json', 'restore', '--at', at, '--dry-run'], { maxBuffer: 64 * MiB });
      if ((JSON.parse(stdout) as { seq: number }).seq !== wanted) throw new Error('the CLI chose another point');
      return Number(process.hrtime.bigint() - t) / 1e9;
    });
    rows.push(row('log', 'restore --at TIME --dry-run (CLI, s)', fmt(cliRestore, 3), { note: 'chooses the point and folds its whole map (fake packs: no data restored)' }));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---- part 5: no regression ----------------------------------------------------------------

async function randomImage(path: string, size: number): Promise<void> {
  const file = await open(path, 'w');
  const chunk = Buffer.alloc(4 * MiB);
  try {
    for (let at = 0; at < size; at += chunk.length) {
      randomFillSync(chunk);
      await file.write(chunk, 0, Math.min(chunk.length, size - at), at);
    }
  } finally {
    await file.close();
  }
}

async function partRegress(o: Options, rows: PagedRow[], log: (line: string) => void): Promise<void> {
  const dir = await mkdtemp(join(o.dir, 'cdp-paged-regress-'));
  const mbps = (bytes: number, s: number): string => `${fmt(bytes / s / 1e6, 0)} MB/s`;
  try {
    // Scan of a page-cached image vs openssl.
    log(`regress: scan of a page-cached ${bytesText(o.scanSize)} image vs openssl…`);
    const image = join(dir, 'disk.img');
    await writeImage(image, o.scanSize, 7);
    const repo = join(dir, 'repo');
    await cdp(['--repo', repo, 'init', '--from', image]);
    await cdp(['--repo', repo, 'backup', image]);
    await run('dd', [`if=${image}`, 'of=/dev/null', 'bs=16M', 'status=none']);
    const openssl = await medianOf(o.runs, () => seconds('openssl', ['dgst', '-sha256', image]));
    const scanS = await medianOf(o.runs, async () => {
      const r = await cdp(['--repo', repo, 'scan', image]);
      if (r.json['discrepancies'] !== 0) throw new Error('the image should be in sync');
      return r.seconds;
    });
    rows.push(
      row('regress', `scan, in sync, page-cached ${bytesText(o.scanSize)} (s)`, fmt(scanS, 3), {
        baseline: `openssl dgst -sha256 ${fmt(openssl, 3)} s`,
        ratio: ratioText(openssl / scanS),
        target: '>= 1.3x',
        ok: check(openssl / scanS >= 1.3),
        note: `${mbps(o.scanSize, scanS)} vs ${mbps(o.scanSize, openssl)}`,
      }),
    );
    await rm(image, { force: true });
    await rm(repo, { recursive: true, force: true });

    if (!existsSync(AWS)) {
      log(`${AWS} not found: S3 rows skipped`);
      return;
    }
    // Restore from s3rver (plain http) vs aws s3 cp down of the same bytes (all random: the
    // restore downloads and writes what aws does).
    const s3image = join(dir, 's3disk.img');
    log(`regress: restore from s3rver vs aws s3 cp, ${bytesText(o.s3Size)} of random bytes…`);
    await randomImage(s3image, o.s3Size);
    {
      const server = await startS3Server({ buckets: ['bench'], directory: join(dir, 's3') });
      const env: NodeJS.ProcessEnv = { ...process.env, ...s3ServerEnv(server), AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' };
      delete env['AWS_CA_BUNDLE'];
      try {
        await seconds(AWS, ['--endpoint-url', server.endpoint, 's3', 'cp', s3image, 's3://bench/aws/disk.img', '--quiet'], env);
        await cdp(['--repo', 's3://bench/cdp', 'init', '--from', s3image], env);
        await cdp(['--repo', 's3://bench/cdp', 'backup', s3image], env);
        const down = join(dir, 'down.img');
        const aws = await medianOf(o.runs, async () => {
          await rm(down, { force: true });
          return seconds(AWS, ['--endpoint-url', server.endpoint, 's3', 'cp', 's3://bench/aws/disk.img', down, '--quiet'], env);
        });
        // restore fsyncs what it wrote; aws does not: the same download made durable, for the note.
        const awsSync = await medianOf(o.runs, async () => {
          await rm(down, { force: true });
          await run('sync');
          return seconds('sh', ['-c', `'${AWS}' --endpoint-url '${server.endpoint}' s3 cp s3://bench/aws/disk.img '${down}' --quiet && sync '${down}'`], env);
        });
        const restore = await medianOf(o.runs, async () => {
          await rm(down, { force: true });
          await run('sync');
          return (await cdp(['--repo', 's3://bench/cdp', 'restore', '--at', 'latest', '--to', down], env)).seconds;
        });
        const same = await run('cmp', ['-s', s3image, down]).then(() => true, () => false);
        if (!same) throw new Error('the restored image differs');
        await rm(down, { force: true });
        rows.push(
          row('regress', `restore from s3rver, ${bytesText(o.s3Size)} (s)`, fmt(restore, 3), {
            baseline: `aws s3 cp down ${fmt(aws, 3)} s`,
            ratio: ratioText(aws / restore),
            target: '>= 1.0x',
            ok: check(aws / restore >= 1),
            note: `${mbps(o.s3Size, restore)} vs ${mbps(o.s3Size, aws)}; ${ratioText(awsSync / restore)} of aws s3 cp + sync (${fmt(awsSync, 3)} s): restore fsyncs and verifies every region`,
          }),
        );
      } finally {
        await server.stop();
      }
    }

    // verify --read-data vs restic check --read-data, same image, same TLS s3rver.
    if (!existsSync('/usr/bin/restic')) {
      log('restic not found: the verify row is skipped');
      return;
    }
    log('regress: verify --read-data vs restic check --read-data over TLS s3rver…');
    const key = join(dir, 'key.pem');
    const cert = join(dir, 'cert.pem');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    const server = await startS3Server({ buckets: ['bench'], directory: join(dir, 's3tls'), tls: { key, cert } });
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ...s3ServerEnv(server),
      NODE_EXTRA_CA_CERTS: cert,
      AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
      RESTIC_PASSWORD: 'bench',
      RESTIC_CACHE_DIR: join(dir, 'restic-cache'),
    };
    delete env['AWS_CA_BUNDLE'];
    try {
      const resticRepo = `s3:${server.endpoint}/bench/restic`;
      const restic = (args: string[]): Promise<number> => seconds('restic', ['--cacert', cert, '-r', resticRepo, '--no-cache', ...args], env);
      await restic(['init']);
      await restic(['backup', s3image]);
      await cdp(['--repo', 's3://bench/cdp', 'init', '--from', s3image], env);
      const stored = Number((await cdp(['--repo', 's3://bench/cdp', 'backup', s3image], env)).json['bytesStored']);
      const resticS = await medianOf(o.runs, () => restic(['check', '--read-data']));
      const verifyS = await medianOf(o.runs, async () => (await cdp(['--repo', 's3://bench/cdp', 'verify', '--read-data', '--dry-run'], env)).seconds);
      rows.push(
        row('regress', `verify --read-data, TLS s3rver, ${bytesText(stored)} stored (s)`, fmt(verifyS, 3), {
          baseline: `restic check --read-data ${fmt(resticS, 3)} s`,
          ratio: ratioText(resticS / verifyS),
          target: '>= 1.0x',
          ok: check(resticS / verifyS >= 1),
          note: `${mbps(stored, verifyS)} vs ${mbps(o.s3Size, resticS)}`,
        }),
      );
    } finally {
      await server.stop();
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---- entry ----------------------------------------------------------------------------------

export async function runPagedBench(argv: string[], log: (line: string) => void): Promise<PagedRow[]> {
  const o = parseOptions(argv);
  await mkdir(o.dir, { recursive: true });
  const rows: PagedRow[] = [];
  const parts: Array<[string, (o: Options, rows: PagedRow[], log: (line: string) => void) => Promise<void>]> = [
    ['base', partBase],
    ['meta', partMeta],
    ['protect', partProtect],
    ['rss', partRss],
    ['log', partLog],
    ['regress', partRegress],
  ];
  for (const [name, part] of parts) {
    if (!o.parts.has(name)) continue;
    const start = Date.now();
    await part(o, rows, log);
    log(`${name}: done in ${fmt((Date.now() - start) / 1000, 1)} s`);
  }
  return rows;
}

export function renderPagedBench(rows: PagedRow[]): string {
  return table(
    ['part', 'measure', 'value', 'baseline', 'ratio', 'target', 'ok', 'note'],
    rows.map((r) => [r.part, r.measure, r.value, r.baseline, r.ratio, r.target, r.ok, r.note]),
  );
}
