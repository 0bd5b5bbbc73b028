// The `status/` record a running protect publishes about itself (docs/FORMAT.md, "status/"):
// written by protect, read by `cdp-s3 status`, which must not need protect (the NBD server) to
// read it.

import { createHash } from 'node:crypto';
import { hostname } from 'node:os';
import { type RepoKeys, keyedName } from './crypto.js';
import { FORMAT_VERSION, openEnvelope, sealEnvelope } from './envelope.js';

export const PROTECT_STATUS_PREFIX = 'status/';
export const PROTECT_STATUS_KIND = { magic: 'CDPS3STA', version: FORMAT_VERSION, what: 'protect status' } as const;

/** What a protect knows about its own progress. */
export interface ProtectStatus {
  /** Newest committed point in time. */
  seq: number;
  time: string | undefined;
  /** Milliseconds since the oldest write not yet in a committed delta (0 when all shipped). */
  lagMs: number;
  oldestUnshippedWrite: string | undefined;
  /** Regions in the dirty region log. */
  drlRegions: number;
  /** Bytes of pre-images held for sealed, unshipped regions. */
  preimageBytes: number;
  /** Points in time sealed during a store outage and kept in the local spool, and their bytes. */
  spooledPoints: number;
  spoolBytes: number;
  /** Regions written and not yet committed. */
  unshippedRegions: number;
  deltasShipped: number;
  lastShipError: string | undefined;
  lastScan: unknown;
  /** While the repository has no base yet: the base being taken (regions of its phase done). */
  base: { phase: string; regionsDone: number; regionsTotal: number } | undefined;
}

/** One stored report: the status, and which protect made it when. */
export interface ProtectStatusRecord extends ProtectStatus {
  running: boolean;
  /** ms since the epoch. */
  updated: number;
  intervalMs: number;
  source: string;
  host: string;
  pid: number;
}

/**
 * The key of the protect of `source` on this host. In an encrypted repository the name is keyed
 * (it would otherwise say the host's name): `status/<24 hex digits>`.
 */
export function protectStatusKey(source: string, keys?: RepoKeys): string {
  if (keys !== undefined) return `${PROTECT_STATUS_PREFIX}${keyedName(keys, `${hostname()}\n${source}`)}`;
  return `${PROTECT_STATUS_PREFIX}${hostname()}-${createHash('sha256').update(source).digest('hex').slice(0, 12)}`;
}

export function encodeProtectStatus(record: ProtectStatusRecord): Uint8Array {
  return sealEnvelope(PROTECT_STATUS_KIND, { json: JSON.stringify(record) });
}

export function decodeProtectStatus(bytes: Uint8Array): ProtectStatusRecord {
  return JSON.parse(String(openEnvelope(PROTECT_STATUS_KIND, bytes)['json'])) as ProtectStatusRecord;
}
