// protect: continuous data protection through an NBD front end. Every write to the protected
// disk passes through ProtectedVolume, so cdp-s3 knows exactly which regions changed and when:
//
//  - a write marks the dirty region log (durably, before the write itself) for regions not yet
//    marked, is applied to the primary, and is recorded in the open delta map (protect/write-tracker);
//  - every interval the open delta map is sealed at one instant and shipped as a delta. The
//    shipped content of each region is exactly its content at the seal instant: a write to a
//    sealed region that is not shipped yet first saves the region's pre-image (bounded memory;
//    past the bound the write waits for the region to be shipped) (protect/shipper);
//  - after the delta commits, the DRL bits of its regions clear (unless written again);
//  - an interval that ends while a shipment is still trying is sealed into a local spool at once
//    (protect/spool); if the store fails, the failed point waits there too, ahead of them, and
//    so does every interval's point from then on, until the drain has shipped them all in order;
//    writes keep being served; the lag (oldest unshipped write) is visible;
//  - on start, regions left in the DRL by a crash are shipped with the first seal (claims 5, 6).
//
// This file runs it all: the NBD server, the interval, scheduled scans, status reports, the drain.

import { hostname } from 'node:os';
import { type NbdExport } from '../nbd/types.js';
import { NbdServer } from '../nbd/server.js';
import { type ProtectStatus, encodeProtectStatus, protectStatusKey } from '../repo/protect-status.js';
import { storeKeys } from '../repo/sealed-store.js';
import type { ProtectedVolumeOptions } from './protect/options.js';
import { ProtectedVolume } from './protect/protected-volume.js';
import { InvalidArgumentError } from '../errors.js';
import { type RetentionPolicy, checkRetentionPolicy } from '../model/retention.js';
import { HEAD_MAX_AGE_MS } from './delta-committer.js';
import { type ForgetResult, forget } from './forget.js';
import { type PruneResult, prune } from './prune.js';
import { type ScanResult, scan } from './scan.js';

export { ProtectedVolume } from './protect/protected-volume.js';
export type { ProtectHooks, ProtectedVolumeOptions } from './protect/options.js';
export { PROTECT_STATUS_KIND, PROTECT_STATUS_PREFIX, type ProtectStatus, protectStatusKey } from '../repo/protect-status.js';

export interface ProtectOptions extends ProtectedVolumeOptions {
  listen: { host: string; port: number };
  /** Extra export names besides the default empty one. */
  names?: string[];
  /** Milliseconds between seals. Default 5000. */
  intervalMs?: number;
  /** Milliseconds between integrity scans (0: only on demand). */
  scanEveryMs?: number;
  /**
   * Thin the history on a schedule: every `everyMs`, forget by `policy`, then prune with `graceMs`
   * (default 24 h). Runs alongside shipping, as `cdp-s3 forget` and `prune` would from outside.
   */
  retention?: { policy: RetentionPolicy; everyMs: number; graceMs?: number; /** prune's clock (tests) */ clock?: () => number };
  /** Runs `run` every `everyMs` until the returned function is called. Default setInterval (tests tick by hand). */
  schedule?: (run: () => void, everyMs: number) => () => void;
}

function everyInterval(run: () => void, everyMs: number): () => void {
  const timer = setInterval(run, everyMs);
  return () => clearInterval(timer);
}

export interface ProtectHandle {
  host: string;
  port: number;
  volume: ProtectedVolume;
  /** Forgets by the retention policy and prunes now (one at a time); undefined without a policy. */
  thinNow(): Promise<{ forgot: ForgetResult; pruned: PruneResult }> | undefined;
  /** Runs an integrity scan now (claims 7–11 with live host-change tracking). */
  scanNow(): Promise<ScanResult>;
  /** Stop accepting, finish in-flight requests, seal and ship a last delta, release everything. */
  stop(): Promise<ProtectStatus>;
}

/**
 * Serves SOURCE over NBD and protects it: a delta every interval, scans on a schedule and on
 * demand, and on stop (or the signal) a clean drain.
 */
export async function protect(options: ProtectOptions): Promise<ProtectHandle> {
  if (options.retention !== undefined) {
    checkRetentionPolicy(options.retention.policy);
    if (!(options.retention.everyMs > 0)) throw new InvalidArgumentError(`--prune-every must be a positive duration, not ${options.retention.everyMs} ms`);
    // protect holds the writer lock itself, and prune needs a grace of at least a writer's head refresh then.
    if ((options.retention.graceMs ?? HEAD_MAX_AGE_MS) < HEAD_MAX_AGE_MS) throw new InvalidArgumentError('a retention grace inside protect must be at least 1h');
  }
  const volume = await ProtectedVolume.open(options);
  const named = (name: string): NbdExport =>
    new Proxy(volume, {
      get: (target, key, receiver) => (key === 'name' ? name : Reflect.get(target, key, receiver)),
    });
  const exports = [volume, ...(options.names ?? []).filter((n) => n !== '').map(named)];
  const server = new NbdServer({ exports, log: options.log });
  let address: { host: string; port: number };
  try {
    address = await server.listen(options.listen.host, options.listen.port);
  } catch (error) {
    await volume.close();
    throw error;
  }
  const intervalMs = options.intervalMs ?? 5000;
  let stopped = false;
  const statusKey = protectStatusKey(options.source, storeKeys(options.store));
  // Status reports are put one at a time, in the order they are made, and the stop's report is
  // the last word: a tick's report still queued or in flight when it is made is cancelled, so no
  // late "running" can land after it. A report reads the status when its put starts, so while
  // one is queued another adds nothing: reports never pile up behind a slow store.
  let reported: Promise<void> = Promise.resolve();
  const ticking = new AbortController();
  let finalReport = false;
  let reportQueued = false;
  const publish = (running: boolean): Promise<void> => {
    if (finalReport) return reported;
    if (!running) {
      finalReport = true;
      ticking.abort();
    } else if (reportQueued) return reported;
    else reportQueued = true;
    const signal = running ? ticking.signal : undefined;
    reported = reported.then(async () => {
      if (running) reportQueued = false;
      if (signal?.aborted === true) return; // the stop's report is made: this one is cancelled
      const record = { ...volume.status(), running, updated: Date.now(), intervalMs, source: options.source, host: hostname(), pid: process.pid };
      await options.store.put(statusKey, encodeProtectStatus(record), { signal }).catch(() => undefined);
    });
    return reported;
  };
  // No base yet: take it while serving; nothing else commits until it has. A failed base is
  // taken again at the next interval.
  const baseAbort = new AbortController();
  let takingBase: Promise<void> | undefined;
  const takeBase = (): void => {
    if (takingBase !== undefined || volume.hasBase || stopped) return;
    takingBase = volume
      .takeBase({ signal: baseAbort.signal })
      .then((result) => {
        const fuzzy = result.suspect.length > 0 ? ' (the host wrote meanwhile: marked suspect, the next point in time is the first whole one)' : '';
        options.log?.(`base: point in time ${result.fixupSeq}, ${result.repaired} regions${fuzzy}`);
      })
      .catch((error: unknown) => {
        if (!stopped) options.log?.(`taking the base failed, trying again at the next interval: ${(error as Error).message}`);
      })
      .finally(() => {
        takingBase = undefined;
      });
  };
  takeBase();
  const schedule = options.schedule ?? everyInterval;
  const stopTicker = schedule(() => {
    takeBase();
    if (stopped) return;
    // Every tick reports, whatever the shipment is doing (a drain can take long to fail), and
    // again once the shipment has settled.
    void publish(true);
    void volume.sealAndShip().then(() => publish(true)).catch((error: unknown) => options.log?.(`shipping: ${(error as Error).message}`));
  }, intervalMs);
  // Not awaited: a report is informational, and a slow store (a put retried up to 6 times, 10 s
  // each) must not keep protect from saying that it serves; supervisors wait for that.
  void publish(true);
  const scanNow = async (): Promise<ScanResult> => {
    const result = await volume.exclusive((lock) =>
      scan({ store: options.store, source: options.source, changes: volume, heldLock: lock }),
    );
    volume.lastScan = { time: new Date().toISOString(), scanned: result.scanned, discrepancies: result.discrepancies, fixupSeq: result.fixupSeq, suspect: result.suspect };
    options.log?.(`scan: ${result.scanned} regions, ${result.discrepancies} differed${result.suspect.length > 0 ? `, suspect ${result.suspect.join(', ')}` : ''}`);
    return result;
  };
  const stopScans =
    options.scanEveryMs !== undefined && options.scanEveryMs > 0
      ? schedule(() => {
          if (!stopped) scanNow().catch((error: unknown) => options.log?.(`scheduled scan failed: ${(error as Error).message}`));
        }, options.scanEveryMs)
      : undefined;
  // Retention: one forget + prune at a time; stop cancels a running one (it leaves nothing half-done).
  const thinAbort = new AbortController();
  let thinning: Promise<{ forgot: ForgetResult; pruned: PruneResult }> | undefined;
  const retention = options.retention;
  const thinNow = (): Promise<{ forgot: ForgetResult; pruned: PruneResult }> | undefined => {
    if (retention === undefined) return undefined;
    return (thinning ??= (async () => {
      try {
        const forgot = await forget({ store: options.store, policy: retention.policy, signal: thinAbort.signal });
        const pruned = await prune({
          store: options.store,
          graceMs: retention.graceMs,
          signal: thinAbort.signal,
          // Compaction rewrites runs: shipping pauses meanwhile, and picks up the new chain after.
          exclusive: (fn) => volume.exclusive(() => fn()),
          ...(retention.clock === undefined ? {} : { clock: retention.clock }),
        });
        options.log?.(`retention: forgot ${forgot.removedCount} points, kept ${forgot.keep.length}; pruned ${pruned.deleted.length} objects (${pruned.waiting.length} waiting for the grace)`);
        return { forgot, pruned };
      } finally {
        thinning = undefined;
      }
    })());
  };
  const stopThinning =
    retention !== undefined
      ? schedule(() => {
          if (!stopped) thinNow()?.catch((error: unknown) => options.log?.(`retention failed: ${(error as Error).message}`));
        }, retention.everyMs)
      : undefined;
  let stopping: Promise<ProtectStatus> | undefined;
  const stop = (): Promise<ProtectStatus> =>
    (stopping ??= (async () => {
      stopped = true;
      stopTicker();
      stopScans?.();
      stopThinning?.();
      thinAbort.abort();
      await thinning?.catch(() => undefined);
      baseAbort.abort(); // an unfinished base commits nothing; it is taken at the next start
      await takingBase;
      await server.close({ drain: true });
      try {
        await volume.sealAndShip(); // the last delta: everything written before the drain
        await publish(false);
        return volume.status();
      } finally {
        await volume.close();
      }
    })());
  options.signal?.addEventListener('abort', () => void stop(), { once: true });
  return { host: address.host, port: address.port, volume, scanNow, thinNow, stop };
}
