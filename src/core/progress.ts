// Progress reporting: core code never prints; it tells a Progress what it is doing, and the
// CLI decides how (a bar on a terminal, nothing on a pipe).

export interface Progress {
  /** A new phase begins; totalBytes may be 0 when unknown. */
  phase(name: string, totalBytes: number): void;
  /** Bytes of the current phase done since the last call. */
  advance(bytes: number): void;
  /** The phase is over. */
  done(): void;
}

export const silentProgress: Progress = {
  phase() {},
  advance() {},
  done() {},
};
