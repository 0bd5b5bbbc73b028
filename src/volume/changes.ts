// Host-change tracking: which regions the host wrote, and when. The engine records host writes
// over an interval (the scan interval, the copy interval) and asks which regions changed since
// they were last committed (the present delta map, claim 3).
//
// Two sources: InProcessWriter, for writes that go through cdp-s3 (tests now, the NBD front end
// later), and QuiescentSource, for a source nobody writes (an LVM/ZFS snapshot, an idle image).

import { type FileHandle, open } from 'node:fs/promises';
import { pwriteFully } from '../util/positional-io.js';
import { InvalidArgumentError } from '../errors.js';
import { DeltaMap } from '../model/delta-map.js';
import type { Geometry } from '../model/regions.js';

export interface ChangeRecorder {
  /** Regions written since recording began (a copy). */
  snapshot(): DeltaMap;
  /** Stops recording and returns the regions written while it ran. */
  stop(): DeltaMap;
}

export interface ChangeSource {
  /** Starts recording host writes from this instant. */
  record(): ChangeRecorder;
  /** Regions written since they were last reported committed (a copy). */
  pending(): DeltaMap;
  /** A delta holding the current content of these regions has committed. */
  committed(regions: DeltaMap): void;
  /**
   * These regions' stored versions may not be what the primary held before the writes tracked
   * since (a scan found them different and did not repair them): a source that ships patches
   * of the blocks written ships them whole next time.
   */
  distrust?(regions: DeltaMap): void;
}

/** Something that durably remembers dirty regions before a write is acknowledged. */
export interface DirtyRegionSink {
  mark(regions: DeltaMap): Promise<void>;
}

class MapRecorder implements ChangeRecorder {
  constructor(
    readonly map: DeltaMap,
    private readonly onStop: (recorder: MapRecorder) => void,
  ) {}

  snapshot(): DeltaMap {
    return this.map.clone();
  }

  stop(): DeltaMap {
    this.onStop(this);
    return this.map;
  }
}

/** A source nobody writes while cdp-s3 reads it: every recording is empty. */
export class QuiescentSource implements ChangeSource {
  constructor(private readonly regionCount: number) {}

  record(): ChangeRecorder {
    return new MapRecorder(new DeltaMap(this.regionCount), () => {});
  }

  pending(): DeltaMap {
    return new DeltaMap(this.regionCount);
  }

  committed(): void {}
}

/**
 * The primary volume written through cdp-s3: write(offset, bytes) marks the dirty region log
 * (when there is one) durably, writes the volume, and records the regions as changed.
 */
export class InProcessWriter implements ChangeSource {
  private readonly recorders = new Set<MapRecorder>();
  private readonly unsaved: DeltaMap;

  private constructor(
    private readonly handle: FileHandle,
    readonly geometry: Geometry,
    private readonly drl: DirtyRegionSink | undefined,
  ) {
    this.unsaved = new DeltaMap(geometry.regionCount);
  }

  static async open(path: string, geometry: Geometry, options: { drl?: DirtyRegionSink } = {}): Promise<InProcessWriter> {
    return new InProcessWriter(await open(path, 'r+'), geometry, options.drl);
  }

  /** Writes bytes at offset; resolves once the write is durable and recorded. */
  async write(offset: number, bytes: Uint8Array): Promise<void> {
    const g = this.geometry;
    if (!Number.isSafeInteger(offset) || offset < 0 || offset + bytes.length > g.volumeSize) {
      throw new InvalidArgumentError(`write of ${bytes.length} bytes at ${offset} is outside the ${g.volumeSize}-byte volume`);
    }
    if (bytes.length === 0) return;
    const touched = new DeltaMap(g.regionCount).setRange(Math.floor(offset / g.regionSize), Math.ceil((offset + bytes.length) / g.regionSize));
    await this.drl?.mark(touched);
    await pwriteFully(this.handle.fd, bytes, offset);
    await this.handle.datasync();
    this.unsaved.union(touched);
    for (const recorder of this.recorders) recorder.map.union(touched);
    touched.dispose();
  }

  record(): ChangeRecorder {
    const recorder = new MapRecorder(new DeltaMap(this.geometry.regionCount), (r) => this.recorders.delete(r));
    this.recorders.add(recorder);
    return recorder;
  }

  pending(): DeltaMap {
    return this.unsaved.clone();
  }

  committed(regions: DeltaMap): void {
    this.unsaved.subtract(regions);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}
