// `npm run bench -- crash [--json] [--trials 30] [--seed 1] [--size 8MiB] [--stores fs,s3]`:
// the crash loop. Real `cdp-s3 backup` and `cdp-s3 protect` child processes are SIGKILLed at
// seeded random moments, over and over, against a local directory and s3rver:
//
// - backup: the image changes, a backup is killed after a random delay (drawn from the duration
//   of the last unkilled one), the image changes again and the next backup runs to completion.
//   Then every committed point in time (each one's image kept as a SHA-256) restores bit-exact
//   and `verify --read-data` finds nothing (orphaned packs of killed backups are allowed).
// - protect: qemu-io writes random blocks through the export, one at a time; protect is
//   SIGKILLed as a random number of them have been acknowledged. Every acknowledged write must
//   be in the volume (the one in flight may or may not be); protect is restarted on the same
//   DRL (about every other trial killed once more while it ships the DRL's regions, and
//   restarted again) and drained with SIGTERM, and the newest point in time must restore
//   bit-exact to the volume.
//
// The random moment only chooses where to kill; every outcome must pass. test/cli/crash-loop.test.ts
// runs a short form of the same loops.

import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/cli/units.js';
import { backup } from '../src/core/backup.js';
import { init } from '../src/core/init.js';
import { log as readLog } from '../src/core/log.js';
import { parsePointSelector } from '../src/core/points.js';
import { executeRestore, planRestore } from '../src/core/restore.js';
import { verify } from '../src/core/verify.js';
import { makeImage, mutateImage, seededRandom } from '../src/demo/sample-image.js';
import { s3ServerEnv, startS3Server } from '../src/dev/s3-server.js';
import { openStore } from '../src/store/open.js';
import type { ObjectStore } from '../src/store/types.js';
import { option, table } from './harness.js';
import { CLI } from './workload.js';

const REGION = 64 * 1024;
/** Small packs, so a backup puts several and a kill can fall between them. */
const PACK = 256 * 1024;
/** Small, so kills also fall between a delta and the spans it completes. */
const SPAN_FANOUT = 3;
/** Writes queued after the kill point (they fail once protect is gone). */
const SPARE_WRITES = 64;
/** A restart that does not listen by then is a hang, not a slow machine (the report shows each start's seconds). */
const START_TIMEOUT_MS = 240_000;
/** protect's --interval: short, so kills fall during shipping as often as during writes. */
const INTERVAL_MS = 200;

export type CrashStore = 'fs' | 's3';

export interface CrashLoopOptions {
  /** The built command, dist/src/cli/main.js. */
  cli: string;
  /** A scratch directory of this loop's own. */
  work: string;
  /** A repository that does not exist yet: a directory path or an s3:// URL. */
  repo: string;
  /** Label for the report. */
  store: CrashStore;
  trials: number;
  seed: number;
  /** Volume size in bytes. */
  size: number;
  /** protect: SIGKILL as the n-th write is acknowledged, n drawn from 1 … this. Default 300. */
  maxAckedWrites?: number;
  log?: (line: string) => void;
}

export interface CrashReport {
  scenario: 'backup' | 'protect';
  store: CrashStore;
  trials: number;
  /** SIGKILLs that found the process running (protect: also some during recovery). */
  kills: number;
  /** Points in time restored and compared with the image they were taken from. */
  pointsChecked: number;
  /** Acknowledged writes missing, or points in time that did not restore bit-exact. */
  losses: number;
  /** Everything that went wrong, one line each (empty when the loop passed). */
  failures: string[];
  seconds: number;
  /** protect: the longest a start took until it printed its address (a start limit is START_TIMEOUT_MS). */
  slowestStartSeconds: number;
}

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');
const now = (): number => Number(process.hrtime.bigint()) / 1e9;

interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

function exited(child: ChildProcess): Promise<Exit> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

function running(child: ChildProcess): boolean {
  return child.exitCode === null && child.signalCode === null;
}

function spawnCdp(cli: string, args: string[]): { child: ChildProcess; stderr: () => string } {
  const child = spawn(process.execPath, [cli, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stdout!.resume();
  child.stderr!.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
  return { child, stderr: () => stderr.trim() };
}

/** Runs the command; SIGKILLs it `killAfterMs` after the spawn if it is still running then. */
async function runCdp(cli: string, args: string[], killAfterMs?: number): Promise<Exit & { seconds: number; killed: boolean; stderr: string }> {
  const start = now();
  const { child, stderr } = spawnCdp(cli, args);
  let killed = false;
  const timer =
    killAfterMs === undefined
      ? undefined
      : setTimeout(() => {
          if (running(child)) killed = child.kill('SIGKILL');
        }, killAfterMs);
  const exit = await exited(child);
  clearTimeout(timer);
  return { ...exit, seconds: now() - start, killed: killed && exit.signal === 'SIGKILL', stderr: stderr() };
}

async function committedSeqs(store: ObjectStore): Promise<number[]> {
  return (await readLog({ store })).entries.map((e) => e.seq);
}

/** SHA-256 of point in time `at` restored into a scratch file. */
async function restoredHash(store: ObjectStore, at: string, work: string): Promise<string> {
  const target = join(work, `restored-${at}.img`);
  await executeRestore(await planRestore({ store, at: parsePointSelector(at) }), { to: target, workers: 2 });
  try {
    return sha256(await readFile(target));
  } finally {
    await rm(target, { force: true });
  }
}

/** verify --read-data: one line per problem. */
async function verifyProblems(store: ObjectStore): Promise<string[]> {
  const result = await verify({ store, readData: true, dryRun: true, workers: 2 });
  return result.problems.map((p) => `verify: ${p.object} ${p.key}: ${p.detail}`);
}

function emptyReport(scenario: CrashReport['scenario'], o: CrashLoopOptions): CrashReport {
  return { scenario, store: o.store, trials: 0, kills: 0, pointsChecked: 0, losses: 0, failures: [], seconds: 0, slowestStartSeconds: 0 };
}

/** Backups SIGKILLed at random moments, each followed by one that completes. */
export async function backupCrashLoop(o: CrashLoopOptions): Promise<CrashReport> {
  const started = now();
  const report = emptyReport('backup', o);
  const fail = (line: string): void => {
    report.failures.push(`backup/${o.store} trial ${report.trials}: ${line}`);
    o.log?.(`  FAIL ${line}`);
  };
  const rand = seededRandom(o.seed);
  await mkdir(o.work, { recursive: true });
  const store = openStore(o.repo);
  const source = join(o.work, 'disk.img');
  const image = makeImage({ size: o.size, regionSize: REGION, seed: o.seed });
  await writeFile(source, image);
  await init({ store, from: source, regionSize: REGION, packSize: PACK, spanFanout: SPAN_FANOUT });
  const args = ['--repo', o.repo, 'backup', source];
  /** Committed point in time → SHA-256 of the image it was taken from. */
  const points = new Map<number, string>();
  const changes = Math.max(1, Math.round(o.size / (512 * 1024)));
  let mutation = o.seed * 1_000_000;

  /** Records the points in time that appeared since `before` as holding `hash`. */
  const record = async (before: Set<number>, hash: string): Promise<number[]> => {
    const added = (await committedSeqs(store)).filter((seq) => !before.has(seq));
    for (const seq of added) points.set(seq, hash);
    return added;
  };
  const change = async (): Promise<string> => {
    mutateImage(image, changes, ++mutation);
    await writeFile(source, image);
    return sha256(image);
  };

  const base = await runCdp(o.cli, args);
  if (base.code !== 0) throw new Error(`the base backup failed (${base.code}): ${base.stderr}`);
  await record(new Set(), sha256(image));
  let observed = base.seconds;

  for (let trial = 1; trial <= o.trials; trial++) {
    report.trials = trial;
    // The killed backup.
    let hash = await change();
    let before = new Set(points.keys());
    const delay = rand() * observed;
    const victim = await runCdp(o.cli, args, delay * 1000);
    if (victim.killed) report.kills++;
    else if (victim.code !== 0) fail(`a backup that was not killed exited with ${victim.code} ${victim.signal ?? ''}: ${victim.stderr}`);
    const committedByVictim = await record(before, hash);
    // Killed, it committed its point in time or nothing; not killed, exactly its point.
    if (committedByVictim.length > 1 || (!victim.killed && committedByVictim.length !== 1)) {
      fail(`the ${victim.killed ? 'killed' : 'unkilled'} backup committed points ${committedByVictim.join(', ') || 'none'}`);
    }
    // The next backup completes, after another change.
    hash = await change();
    before = new Set(points.keys());
    const next = await runCdp(o.cli, args);
    if (next.code !== 0) {
      fail(`the backup after a kill exited with ${next.code} ${next.signal ?? ''}: ${next.stderr}`);
      break;
    }
    observed = next.seconds;
    const committed = await record(before, hash);
    if (committed.length !== 1) fail(`the completed backup added points ${committed.join(', ') || 'none'}, not one`);
    o.log?.(
      `backup/${o.store} trial ${trial}: SIGKILL after ${(delay * 1000).toFixed(0)} ms ${victim.killed ? `(killed, ${committedByVictim.length} committed)` : '(had finished)'}; ` +
        `next backup ${next.seconds.toFixed(2)} s; checking ${points.size} points in time`,
    );
    // Exactly the recorded points are listed, each restores bit-exact, and verify is clean.
    const listed = await committedSeqs(store);
    if (listed.join() !== [...points.keys()].sort((a, b) => a - b).join()) fail(`log lists ${listed.join(', ')}, recorded ${[...points.keys()].join(', ')}`);
    for (const [seq, expected] of points) {
      report.pointsChecked++;
      const actual = await restoredHash(store, String(seq), o.work).catch((e: unknown) => `restore failed: ${(e as Error).message}`);
      if (actual !== expected) {
        report.losses++;
        fail(`point in time ${seq} does not restore bit-exact (${actual})`);
      }
    }
    for (const problem of await verifyProblems(store)) fail(problem);
    if (report.failures.length > 0) break;
  }
  report.seconds = now() - started;
  return report;
}

interface ProtectProcess {
  child: ChildProcess;
  url: string;
  stderr: () => string;
  /** From the spawn to the address printed. */
  startSeconds: number;
}

/**
 * Starts `cdp-s3 protect` and waits for the address it prints. With --debug, so a start that
 * does not listen in time shows its store retries (operation, key, attempt, why) in the failure.
 */
async function startProtect(o: CrashLoopOptions, source: string, drl: string, report: CrashReport): Promise<ProtectProcess> {
  const spawned = now();
  const { child, stderr } = spawnCdp(o.cli, ['--debug', '--repo', o.repo, '--json', 'protect', source, '--drl', drl, '--listen', '127.0.0.1:0', '--interval', `${INTERVAL_MS}ms`]);
  let stdout = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => {
      // Leave no process behind; the loop records this as a failure.
      child.kill('SIGKILL');
      reject(new Error(`protect did not listen within ${START_TIMEOUT_MS / 1000} s: ${stderr() || '(no output)'}`));
    }, START_TIMEOUT_MS);
    child.stdout!.on('data', (chunk: Buffer) => {
      stdout += chunk.toString();
      try {
        const info = JSON.parse(stdout) as { host: string; port: number };
        clearTimeout(timer);
        resolve(`nbd://${info.host}:${info.port}`);
      } catch {
        // not all of the JSON yet
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`protect exited with ${code ?? signal} before it listened: ${stderr() || '(no output)'}`));
    });
  });
  const startSeconds = now() - spawned;
  report.slowestStartSeconds = Math.max(report.slowestStartSeconds, startSeconds);
  return { child, url, stderr, startSeconds };
}

interface Write {
  offset: number;
  length: number;
  pattern: number;
}

function randomWrites(rand: () => number, count: number, size: number): Write[] {
  const writes: Write[] = [];
  for (let i = 0; i < count; i++) {
    const length = 4096 * (1 + Math.floor(rand() * 32)); // 4 KiB … 128 KiB, often across regions
    const offset = 4096 * Math.floor(rand() * ((size - length) / 4096 + 1));
    writes.push({ offset, length, pattern: 1 + Math.floor(rand() * 255) });
  }
  return writes;
}

/**
 * Sends `writes` through qemu-io one at a time (each is acknowledged before the next is sent)
 * and calls `onAck(n)` as the n-th acknowledgement is printed. Resolves with the acknowledged
 * count once qemu-io has exited: writes after the export went away fail, and are not counted.
 */
async function writeThrough(url: string, writes: Write[], onAck: (n: number) => void): Promise<{ acked: number; problems: string[]; stderr: string }> {
  // Line-buffered, so each acknowledgement is seen as it happens.
  const client = spawn('stdbuf', ['-oL', 'qemu-io', '-f', 'raw', '-t', 'none', url], { stdio: ['pipe', 'pipe', 'pipe'] });
  let pending = '';
  const acks: Array<{ offset: number; length: number }> = [];
  client.stdout.on('data', (chunk: Buffer) => {
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop()!;
    for (const line of lines) {
      const match = /wrote (\d+)\/\d+ bytes at offset (\d+)/.exec(line);
      if (match === null) continue;
      acks.push({ length: Number(match[1]), offset: Number(match[2]) });
      onAck(acks.length);
    }
  });
  let stderr = '';
  client.stderr.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-2000)));
  client.stdin.on('error', () => {}); // qemu-io may exit with commands unread
  client.stdin.end(`${writes.map((w) => `write -P ${w.pattern} ${w.offset} ${w.length}`).join('\n')}\nquit\n`);
  await exited(client);
  const problems: string[] = [];
  acks.forEach((ack, i) => {
    const w = writes[i];
    if (w === undefined || w.offset !== ack.offset || w.length !== ack.length) problems.push(`acknowledgement ${i + 1} (${ack.length} at ${ack.offset}) is not write ${i + 1}`);
  });
  return { acked: acks.length, problems, stderr: stderr.trim() };
}

/**
 * Compares the volume after a crash with the model of every acknowledged write (`model`, updated
 * here to what the volume holds). Bytes of the write in flight may hold old or new content;
 * anything else that differs is a lost acknowledged write, or damage no write explains.
 */
function checkAcknowledged(model: Buffer, volume: Buffer, writes: Write[], acked: number): { lost: number; problems: string[] } {
  for (let i = 0; i < acked; i++) model.fill(writes[i]!.pattern, writes[i]!.offset, writes[i]!.offset + writes[i]!.length);
  const inFlight = writes[acked];
  const lost = new Set<number>();
  const problems: string[] = [];
  for (let at = 0; at < model.length; at += REGION) {
    const end = Math.min(model.length, at + REGION);
    if (model.subarray(at, end).equals(volume.subarray(at, end))) continue;
    for (let x = at; x < end; x++) {
      if (model[x] === volume[x]) continue;
      if (inFlight !== undefined && x >= inFlight.offset && x < inFlight.offset + inFlight.length && volume[x] === inFlight.pattern) continue;
      let last = -1;
      for (let i = 0; i < acked; i++) if (x >= writes[i]!.offset && x < writes[i]!.offset + writes[i]!.length) last = i;
      if (last >= 0) lost.add(last);
      else if (problems.length < 5) problems.push(`byte ${x} changed though no acknowledged write touched it`);
    }
  }
  for (const i of lost) problems.push(`acknowledged write ${i + 1} (${writes[i]!.length} bytes at ${writes[i]!.offset}) is not in the volume`);
  volume.copy(model);
  return { lost: lost.size, problems };
}

/** protect SIGKILLed under random writes, restarted on the same DRL and drained. */
export async function protectCrashLoop(o: CrashLoopOptions): Promise<CrashReport> {
  const started = now();
  const report = emptyReport('protect', o);
  const fail = (line: string): void => {
    report.failures.push(`protect/${o.store} trial ${report.trials}: ${line}`);
    o.log?.(`  FAIL ${line}`);
  };
  const rand = seededRandom(o.seed);
  await mkdir(o.work, { recursive: true });
  const store = openStore(o.repo);
  const source = join(o.work, 'volume.img');
  const drl = join(o.work, 'volume.drl');
  const model = makeImage({ size: o.size, regionSize: REGION, seed: o.seed });
  await writeFile(source, model);
  await init({ store, from: source, regionSize: REGION, packSize: PACK, spanFanout: SPAN_FANOUT });
  await backup({ store, source, workers: 2 });

  for (let trial = 1; trial <= o.trials; trial++) {
    report.trials = trial;
    // A protect that never listens is a failure of this trial, not the end of the report.
    const ok = await protectTrial(o, report, fail, rand, { store, source, drl, model }).then(
      () => true,
      (error: unknown) => (fail((error as Error).message), false),
    );
    if (!ok || report.failures.length > 0) break;
  }
  report.seconds = now() - started;
  return report;
}

async function protectTrial(
  o: CrashLoopOptions,
  report: CrashReport,
  fail: (line: string) => void,
  rand: () => number,
  { store, source, drl, model }: { store: ObjectStore; source: string; drl: string; model: Buffer },
): Promise<void> {
  const trial = report.trials;
  {
    const killAt = 1 + Math.floor(rand() * (o.maxAckedWrites ?? 300));
    const writes = randomWrites(rand, killAt + SPARE_WRITES, o.size);
    const victim = await startProtect(o, source, drl, report);
    let killed = false;
    const { acked, problems, stderr } = await writeThrough(victim.url, writes, (n) => {
      if (n === killAt && running(victim.child)) killed = victim.child.kill('SIGKILL');
    });
    if (!killed) {
      // The writes stopped before the kill point: protect died on its own, or qemu-io failed.
      fail(`qemu-io stopped after ${acked} acknowledged writes, before the kill point ${killAt}: ${stderr}; protect: ${victim.stderr()}`);
      if (running(victim.child)) victim.child.kill('SIGKILL');
    }
    const exit = await exited(victim.child);
    if (killed && exit.signal === 'SIGKILL') report.kills++;
    else fail(`protect exited with ${exit.code ?? exit.signal}, not by the loop's SIGKILL: ${victim.stderr()}`);
    for (const p of problems) fail(p);
    const volume = await readFile(source);
    const check = checkAcknowledged(model, volume, writes, acked);
    report.losses += check.lost;
    for (const p of check.problems) fail(p);

    // Every other trial or so, a kill during recovery too: the restart ships the DRL's regions
    // with its first seal, one interval after it listens; kill it around then.
    let recoveryKill: number | undefined;
    if (rand() < 0.5) {
      recoveryKill = rand() * 2 * INTERVAL_MS;
      const recovering = await startProtect(o, source, drl, report);
      const timer = setTimeout(() => recovering.child.kill('SIGKILL'), recoveryKill);
      const exit = await exited(recovering.child);
      clearTimeout(timer);
      if (exit.signal === 'SIGKILL') report.kills++;
      else fail(`the recovering protect exited with ${exit.code ?? exit.signal}, not by the loop's SIGKILL: ${recovering.stderr()}`);
    }

    // Restart on the same DRL and drain: the newest point in time is the volume.
    const restarted = await startProtect(o, source, drl, report);
    restarted.child.kill('SIGTERM');
    const drained = await exited(restarted.child);
    if (drained.code !== 0) fail(`the restarted protect exited with ${drained.code ?? drained.signal} on SIGTERM: ${restarted.stderr()}`);
    const after = await readFile(source);
    if (!after.equals(model)) fail('the restarted protect changed the volume');
    report.pointsChecked++;
    const latest = await restoredHash(store, 'latest', o.work).catch((e: unknown) => `restore failed: ${(e as Error).message}`);
    if (latest !== sha256(after)) {
      report.losses++;
      fail(`the newest point in time after the drain does not restore bit-exact to the volume (${latest})`);
    }
    for (const problem of await verifyProblems(store)) fail(problem);
    o.log?.(
      `protect/${o.store} trial ${trial}: SIGKILL at acknowledged write ${killAt} (${acked} acknowledged in all)` +
        `${recoveryKill === undefined ? '' : `, again ${recoveryKill.toFixed(0)} ms into recovery`}; restart listened after ${restarted.startSeconds.toFixed(2)} s; drained; newest point checked`,
    );
  }
}

// ---- the benchmark ----

export async function runCrashBench(argv: string[], log: (line: string) => void): Promise<CrashReport[]> {
  const trials = Number(option(argv, '--trials', '30'));
  const seed = Number(option(argv, '--seed', '1'));
  const size = parseSize(option(argv, '--size', '8MiB'), '--size');
  const stores = option(argv, '--stores', 'fs,s3').split(',') as CrashStore[];
  if (!Number.isInteger(trials) || trials < 1) throw new Error(`--trials must be a positive integer, got ${option(argv, '--trials', '')}`);
  if (stores.some((s) => s !== 'fs' && s !== 's3')) throw new Error(`--stores takes fs, s3 or fs,s3`);
  const dir = await mkdtemp(join(tmpdir(), 'cdp-bench-crash-'));
  const server = stores.includes('s3') ? await startS3Server({ buckets: ['crash'] }) : undefined;
  const savedEnv = { ...process.env };
  if (server !== undefined) Object.assign(process.env, s3ServerEnv(server));
  delete process.env['AWS_CA_BUNDLE'];
  // As the command does: the SDK's warning about Node 20 is not news here.
  process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
  try {
    const reports: CrashReport[] = [];
    for (const scenario of ['backup', 'protect'] as const) {
      for (const [i, store] of stores.entries()) {
        // The trials are shared out among the stores.
        const share = Math.floor((trials + stores.length - 1 - i) / stores.length);
        if (share === 0) continue;
        const name = `${scenario}-${store}`;
        const options: CrashLoopOptions = {
          cli: CLI,
          work: join(dir, name),
          repo: store === 'fs' ? join(dir, name, 'repo') : `s3://crash/${name}`,
          store,
          trials: share,
          seed: seed * 100 + reports.length,
          size,
          log,
        };
        reports.push(scenario === 'backup' ? await backupCrashLoop(options) : await protectCrashLoop(options));
      }
    }
    return reports;
  } finally {
    process.env = savedEnv;
    await server?.stop();
    await rm(dir, { recursive: true, force: true });
  }
}

export function renderCrashBench(reports: CrashReport[]): string {
  const rows = reports.map((r) => [
    r.scenario,
    r.store,
    String(r.trials),
    String(r.kills),
    String(r.pointsChecked),
    String(r.losses),
    String(r.failures.length),
    r.seconds.toFixed(1),
    r.scenario === 'protect' ? r.slowestStartSeconds.toFixed(2) : '-',
  ]);
  const failures = reports.flatMap((r) => r.failures);
  return [table(['scenario', 'store', 'trials', 'kills', 'points checked', 'losses', 'failures', 'seconds', 'slowest start s'], rows), ...failures].join('\n');
}

export function crashBenchFailed(reports: CrashReport[]): boolean {
  return reports.some((r) => r.losses > 0 || r.failures.length > 0);
}
