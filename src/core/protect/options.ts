// The options of a protected volume, shared by its parts (write tracker, spool, shipper).

import type { Compression } from '../../repo/pieces.js';
import type { PatchLimits } from '../../repo/repository.js';
import type { ObjectStore } from '../../store/types.js';

export interface ProtectedVolumeOptions {
  store: ObjectStore;
  source: string;
  /** How shipped points compress what they store (default: the repository's config). */
  compression?: Compression;
  /** The dirty region log file; created if missing. */
  drl: string;
  /**
   * While a shipment is still trying, and while the store is unreachable, each interval's sealed content is kept in a local spool
   * (this directory, default the DRL's path + ".spool") up to spoolBytes (default 1 GiB), so
   * every point in time of the outage is shipped when the store is back. A full spool makes
   * later intervals coalesce into one.
   */
  spoolDir?: string;
  spoolBytes?: number;
  /** A shipment that takes longer fails (and the outage path takes over). Default 10 minutes. */
  shipTimeoutMs?: number;
  /** Bytes of pre-images kept in memory before writes to unshipped regions wait. Default 256 MiB. */
  preimageBytes?: number;
  /** Export name(s). */
  name?: string;
  forceUnlock?: boolean;
  lockTtlMs?: number;
  clock?: () => number;
  log?: (line: string) => void;
  signal?: AbortSignal;
  /** Where tests interleave writes with the shipper deterministically. */
  hooks?: ProtectHooks;
  /** When a region is shipped as a patch instead of whole (default: the repository's; tests and benchmarks set others). */
  patchLimits?: PatchLimits;
}

export interface ProtectHooks {
  /** The shipper is about to read a sealed region (for a delta or a spool segment). */
  beforeShipRead?(region: number): Promise<void> | void;
  /** A write waits for the shipper to read this sealed region: the pre-image memory is full. */
  writeWaits?(region: number): void;
  /** A write is about to change the primary (its DRL marks are durable, its pre-images saved). */
  beforeWriteApplies?(offset: number, length: number): Promise<void> | void;
}

export type ShipResult = { seq: number; regions: number } | undefined;
