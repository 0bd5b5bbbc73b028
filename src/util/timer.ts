// The one timer interface of code whose waits tests drive by hand (test/helpers/manual-clock.ts
// implements it): the repository lock's refreshes and the store's per-attempt timeouts.

export interface Timer {
  /**
   * Calls `callback` once, `ms` from now; returns a function that cancels the call. (The
   * callback's result, e.g. a lock refresh in progress, is for timers that want to await it.)
   */
  schedule(callback: () => unknown, ms: number): () => void;
}

/** setTimeout, unref'd: a pending timer alone keeps no process alive (what it bounds does). */
export const realTimer: Timer = {
  schedule(callback, ms) {
    const handle = setTimeout(callback, ms);
    handle.unref();
    return () => clearTimeout(handle);
  },
};
