// Waiting without deciding by time: poll a condition until it holds (only the test's timeout
// bounds it), or let the event loop run a few turns before checking what must not have happened.

import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Polls until `condition` holds. The pause between polls (`pollMs`, so a wait for another
 * process does not spin a core) decides nothing; `what` says what the test is waiting for.
 */
export async function waitUntil(condition: () => boolean | Promise<boolean>, what: string, pollMs = 2): Promise<void> {
  while (!(await condition())) {
    await sleep(pollMs);
  }
}

/**
 * Lets the event loop run `n` turns: whatever the code under test would do on its own from what
 * has already happened (local socket events, promise callbacks) has happened afterwards. Turns,
 * not time: tests use it before checking that something has NOT happened.
 */
export async function turns(n = 5): Promise<void> {
  for (let i = 0; i < n; i++) await new Promise((resolve) => setImmediate(resolve));
}

/** Runs event-loop turns until `value()` stays the same for ten in a row; returns it. */
export async function quiesce(value: () => number): Promise<number> {
  for (let last = value(), same = 0; ; ) {
    await turns(1);
    const now = value();
    same = now === last ? same + 1 : 0;
    last = now;
    if (same >= 10) return now;
  }
}

/** What became of `promise` so far: undefined while it is pending, then 'resolved' or the error. */
export function outcome(promise: Promise<unknown>): () => unknown {
  let result: unknown;
  promise.then(
    () => (result = 'resolved'),
    (error: unknown) => (result = error),
  );
  return () => result;
}
