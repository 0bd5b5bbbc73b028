// log: the chain of points in time, oldest first.

import type { DeltaKind } from '../model/pit-map.js';
import { Repository } from '../repo/repository.js';
import type { ObjectStore } from '../store/types.js';

export interface LogEntry {
  seq: number;
  /** The point in time (the delta's end), ISO 8601 UTC. */
  time: string;
  /** When the delta's interval began, ISO 8601 UTC. */
  start: string;
  kind: DeltaKind;
  /** Regions changed in this delta. */
  regions: number;
  /** Region bytes this delta stored (after deduplication). */
  bytes: number;
  suspect: boolean;
  checkpoint: boolean;
}

export interface LogResult {
  location: string;
  volumeId: string;
  volumeSize: number;
  regionSize: number;
  entries: LogEntry[];
}

export async function log(options: { store: ObjectStore; signal?: AbortSignal }): Promise<LogResult> {
  const repo = await Repository.open(options.store, options.signal);
  const [seqs, checkpoints] = await Promise.all([repo.deltaSeqs(options.signal), repo.checkpointSeqs(options.signal)]);
  const withCheckpoint = new Set(checkpoints);
  const deltas = await repo.readDeltas(seqs, options.signal);
  const entries = deltas.map((delta): LogEntry => {
    const entry = {
      seq: delta.seq,
      time: new Date(delta.end).toISOString(),
      start: new Date(delta.start).toISOString(),
      kind: delta.kind,
      regions: delta.changed.count(),
      bytes: delta.storedBytes,
      suspect: false,
      checkpoint: withCheckpoint.has(delta.seq),
    };
    delta.changed.dispose();
    return entry;
  });
  return {
    location: options.store.location,
    volumeId: repo.config.volumeId,
    volumeSize: repo.config.volumeSize,
    regionSize: repo.config.regionSize,
    entries,
  };
}
