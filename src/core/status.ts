// status: what a repository holds now (newest point in time, last scan) and what each running
// protect reports about itself (lag, dirty region log, pre-images, shipping errors).

import { PROTECT_STATUS_PREFIX, type ProtectStatus, decodeProtectStatus } from '../repo/protect-status.js';
import { type ObjectLockReport, objectLockReport } from './retention.js';
import { Repository } from '../repo/repository.js';
import { readScanRecords, readTrust } from '../repo/trust.js';
import type { ObjectStore } from '../store/types.js';

export interface ProtectReport extends ProtectStatus {
  key: string;
  source: string;
  host: string;
  pid: number;
  running: boolean;
  intervalMs: number;
  /** When the protect last reported, ISO 8601. */
  updated: string;
  /** No report for three intervals while it says it is running: it probably died. */
  stale: boolean;
}

export interface StatusResult {
  location: string;
  volumeId: string;
  volumeSize: number;
  newest: { seq: number; time: string; kind: string } | undefined;
  /** Points in time marked suspect or damaged. */
  untrusted: number[];
  /** Deltas missing from the chain, and the points in time that cannot be built because of them. */
  missingDeltas: number[];
  unrestorable: number[];
  /** `marks/` objects that cannot be read (restore treats the points before them as possibly marked). */
  /** `newestSeq`: the newest point its writer had seen (the points it may concern end there; absent in old keys). */
  unreadableMarks: Array<{ key: string; error: string; newestSeq?: number }>;
  lastScan: { time: string; scanned: number; discrepancies: number; fixupSeq: number | undefined; suspect: number[] } | undefined;
  protects: ProtectReport[];
  /** Object Lock (docs/FORMAT.md, "Object Lock"); undefined without. */
  objectLock: ObjectLockReport | undefined;
}

export async function status(options: { store: ObjectStore; signal?: AbortSignal; now?: number }): Promise<StatusResult> {
  const { store, signal } = options;
  const repo = await Repository.open(store, signal);
  const index = await repo.fullIndex(signal);
  let newest: StatusResult['newest'];
  if (index.latest > 0) {
    const summary = await repo.summary(index, index.latest, signal).catch(() => undefined);
    if (summary !== undefined) newest = { seq: index.latest, time: new Date(summary.end).toISOString(), kind: summary.kind };
  }
  const missingDeltas = index.missingDeltas();
  const unrestorable: number[] = [];
  // Only points after a missing delta can be blocked: look there, up to the first span standing in.
  for (const missing of missingDeltas) {
    for (let seq = missing + 1; seq <= index.latest; seq++) {
      if (missingDeltas.includes(seq) || index.forgotten.has(seq)) continue;
      const blocking = await index.blockedBy(seq, signal);
      if (blocking === undefined) break;
      if (!unrestorable.includes(seq)) unrestorable.push(seq);
    }
  }
  unrestorable.sort((a, b) => a - b);
  const [trust, scans] = await Promise.all([readTrust(store, signal), readScanRecords(store, signal)]);
  const scan = scans.at(-1)?.value;
  const protects: ProtectReport[] = [];
  const now = options.now ?? Date.now();
  for await (const info of store.list(PROTECT_STATUS_PREFIX, { signal })) {
    try {
      const report = decodeProtectStatus(await store.get(info.key, { signal }));
      protects.push({ ...report, key: info.key, updated: new Date(report.updated).toISOString(), stale: report.running && now - report.updated > 3 * report.intervalMs + 10_000 });
    } catch {
      // An unreadable status report is only informational; skip it.
    }
  }
  return {
    location: store.location,
    volumeId: repo.config.volumeId,
    volumeSize: repo.config.volumeSize,
    newest,
    untrusted: [...trust.marks.keys()].sort((a, b) => a - b),
    missingDeltas,
    unrestorable,
    unreadableMarks: trust.unreadable.map(({ key, error, seq }) => ({ key, error, ...(seq === undefined ? {} : { newestSeq: seq }) })),
    lastScan:
      scan === undefined
        ? undefined
        : { time: new Date(scan.end).toISOString(), scanned: scan.scanned, discrepancies: scan.discrepancies, fixupSeq: scan.fixupSeq, suspect: scan.suspect },
    protects,
    objectLock: repo.config.objectLock === undefined ? undefined : await objectLockReport(repo, repo.config.objectLock, now, signal),
  };
}
