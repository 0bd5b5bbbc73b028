// `npm run bench -- nbd [--json] [--size 1GiB] [--runs 3]`: the NBD server's throughput against
// nbdkit's file plugin on the same image in the same run. nbdcopy (libnbd, 4 connections with
// multi-conn, 64 requests in flight each) writes a page-cached random image into the export and
// reads the export into null:. Our side is NbdServer in this process over FileExport (positional
// fs I/O); the baseline is `nbdkit file` on 127.0.0.1 TCP. Both serve the same file; nbdcopy runs
// with --no-extents so neither side gets to skip data. Each figure is the median of --runs,
// alternating the two servers run by run.

import { randomFillSync } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, open, rm } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseSize } from '../src/cli/units.js';
import { FileExport } from '../src/nbd/file-export.js';
import { NbdServer } from '../src/nbd/server.js';
import { backup } from '../src/core/backup.js';
import { init } from '../src/core/init.js';
import { protect } from '../src/core/protect.js';
import { openStore } from '../src/store/open.js';
import { median, option, table } from './harness.js';
import { run, seconds } from './workload.js';

export interface NbdBenchRow {
  measure: string;
  seconds: number;
  MBps: number;
  baseline?: string;
  ratio?: number;
  target: string;
}


async function writeRandomImage(path: string, size: number): Promise<void> {
  const file = await open(path, 'w');
  const chunk = Buffer.alloc(16 * 1024 * 1024);
  try {
    for (let offset = 0; offset < size; offset += chunk.length) {
      randomFillSync(chunk);
      await file.write(chunk, 0, Math.min(chunk.length, size - offset), offset);
    }
  } finally {
    await file.close();
  }
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function waitForPort(port: number, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`nbdkit exited with code ${child.exitCode}`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port }, () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nbdkit did not listen on port ${port}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

export async function runNbdBench(argv: string[], log: (line: string) => void): Promise<NbdBenchRow[]> {
  const size = parseSize(option(argv, '--size', '1GiB'), '--size');
  const runs = Number(option(argv, '--runs', '3'));
  for (const tool of ['nbdcopy', 'nbdkit']) {
    await run('which', [tool]).catch(() => {
      throw new Error(`${tool} not found: apt-get install ${tool === 'nbdkit' ? 'nbdkit' : 'libnbd-bin'}`);
    });
  }
  const dir = await mkdtemp(join(tmpdir(), 'cdp-bench-nbd-'));
  const image = join(dir, 'source.img');
  const target = join(dir, 'export.img');
  let nbdkit: ChildProcess | undefined;
  let server: NbdServer | undefined;
  let exp: FileExport | undefined;
  try {
    log(`writing a ${size}-byte random image and an export file of the same size…`);
    await writeRandomImage(image, size);
    await writeRandomImage(target, size); // allocated, so neither server writes into holes
    await run('sync');

    exp = await FileExport.open(target);
    server = new NbdServer({ exports: [exp] });
    const ours = (await server.listen('127.0.0.1', 0)).port;
    const kitPort = await freePort();
    nbdkit = spawn('nbdkit', ['-f', '--exit-with-parent', '-i', '127.0.0.1', '-p', String(kitPort), 'file', `file=${target}`], {
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    await waitForPort(kitPort, nbdkit);

    const writeArgs = (port: number): string[] => [image, `nbd://127.0.0.1:${port}/`];
    const readArgs = (port: number): string[] => ['--no-extents', `nbd://127.0.0.1:${port}/`, 'null:'];
    // Warm up both (page cache, JIT) once.
    await seconds('nbdcopy', readArgs(ours));
    await seconds('nbdcopy', readArgs(kitPort));

    // Both sides share the machine's cores with nbdcopy: a busy machine skews the ratio.
    log(`load average before the runs: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
    const times = { oursWrite: [] as number[], kitWrite: [] as number[], oursRead: [] as number[], kitRead: [] as number[] };
    for (let i = 0; i < runs; i++) {
      times.oursWrite.push(await seconds('nbdcopy', writeArgs(ours)));
      times.kitWrite.push(await seconds('nbdcopy', writeArgs(kitPort)));
      times.oursRead.push(await seconds('nbdcopy', readArgs(ours)));
      times.kitRead.push(await seconds('nbdcopy', readArgs(kitPort)));
      log(
        `run ${i + 1}/${runs}: write ours ${times.oursWrite[i]!.toFixed(2)}s nbdkit ${times.kitWrite[i]!.toFixed(2)}s, ` +
          `read ours ${times.oursRead[i]!.toFixed(2)}s nbdkit ${times.kitRead[i]!.toFixed(2)}s`,
      );
    }
    log(`load average after the runs: ${loadavg().map((l) => l.toFixed(2)).join(' ')}`);
    // The export holds the image after the writes: check it, so a fast wrong server cannot win.
    await run('cmp', ['-s', image, target]).catch(() => {
      throw new Error('the export file does not match the image after nbdcopy wrote it');
    });

    // The same, through protect: the write path marks the DRL and records every region.
    log('the same through protect (a repository on the export file; no shipping during the copies)…');
    const repo = join(dir, 'repo');
    const store = openStore(repo);
    await init({ store, from: target });
    await backup({ store, source: target });
    const guarded = await protect({ store, source: target, drl: join(dir, 'export.drl'), listen: { host: '127.0.0.1', port: 0 }, intervalMs: 3_600_000 });
    const protectTimes = { write: [] as number[], read: [] as number[] };
    try {
      await seconds('nbdcopy', readArgs(guarded.port));
      for (let i = 0; i < runs; i++) {
        protectTimes.write.push(await seconds('nbdcopy', writeArgs(guarded.port)));
        protectTimes.read.push(await seconds('nbdcopy', readArgs(guarded.port)));
        log(`run ${i + 1}/${runs}: protect write ${protectTimes.write[i]!.toFixed(2)}s, read ${protectTimes.read[i]!.toFixed(2)}s`);
      }
    } finally {
      await guarded.stop();
    }

    const mbps = (s: number): number => size / s / 1e6;
    const pw = median(protectTimes.write);
    const pr = median(protectTimes.read);
    const m = {
      oursWrite: median(times.oursWrite),
      kitWrite: median(times.kitWrite),
      oursRead: median(times.oursRead),
      kitRead: median(times.kitRead),
    };
    return [
      { measure: 'nbdcopy file -> nbdkit file (baseline)', seconds: m.kitWrite, MBps: mbps(m.kitWrite), target: '' },
      {
        measure: 'nbdcopy file -> NbdServer (FileExport)',
        seconds: m.oursWrite,
        MBps: mbps(m.oursWrite),
        baseline: 'nbdkit write',
        ratio: m.kitWrite / m.oursWrite,
        target: '>= 0.6x',
      },
      { measure: 'nbdcopy nbdkit file -> null: (baseline)', seconds: m.kitRead, MBps: mbps(m.kitRead), target: '' },
      {
        measure: 'nbdcopy NbdServer (FileExport) -> null:',
        seconds: m.oursRead,
        MBps: mbps(m.oursRead),
        baseline: 'nbdkit read',
        ratio: m.kitRead / m.oursRead,
        target: '>= 0.6x',
      },
      { measure: 'nbdcopy file -> protect', seconds: pw, MBps: mbps(pw), baseline: 'nbdkit write', ratio: m.kitWrite / pw, target: '>= 0.6x' },
      { measure: 'nbdcopy protect -> null:', seconds: pr, MBps: mbps(pr), baseline: 'nbdkit read', ratio: m.kitRead / pr, target: '>= 0.6x' },
    ];
  } finally {
    nbdkit?.kill();
    await server?.close({ drain: false });
    await exp?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

export function renderNbdBench(rows: NbdBenchRow[]): string {
  const f = (x: number | undefined, digits = 2): string => (x === undefined ? '' : x.toFixed(digits));
  return table(
    ['measure', 'seconds', 'MB/s', 'baseline', 'ratio', 'target'],
    rows.map((r) => [r.measure, f(r.seconds, 3), f(r.MBps, 0), r.baseline ?? '', f(r.ratio), r.target]),
  );
}
