// Tests that need root (tmpfs, loop devices, mounts) or a Debian tool (qemu-io, nbdcopy, aws, …)
// skip with the reason on a developer machine that lacks it. In CI (.ci/run: CI=true, root, every
// tool installed) a missing requirement is a failure: a test CI cannot run must not pass silently.

import { it } from 'vitest';
import { missingPrograms } from '../../src/dev/programs.js';

export const IN_CI = process.env.CI === 'true';

/** Why the test cannot run here (the missing tools), or undefined. */
export function missingBinaries(...names: string[]): string | undefined {
  const missing = missingPrograms(names);
  return missing.length === 0 ? undefined : `${missing.join(', ')} not installed`;
}

export function notRoot(): string | undefined {
  return process.getuid?.() === 0 ? undefined : 'needs root';
}

/**
 * Inside a test: returns if `why` is undefined; otherwise skips the test with `why`, or in CI
 * throws (fails it).
 */
export function requireOrSkip(context: { skip: (note?: string) => void }, why: string | undefined): void {
  if (why === undefined) return;
  if (IN_CI) throw new Error(`CI must run this test, but ${why}`);
  context.skip(why);
}

/**
 * For it.skipIf / describe.skipIf: skip where `why` is set, except in CI, where the test runs
 * (and fails at the missing tool). Titles carry the reason through skipTitle.
 */
export function skipOutsideCi(why: string | undefined): boolean {
  return why !== undefined && !IN_CI;
}

/** A test title that says why it is skipped, when it is. */
export function skipTitle(title: string, why: string | undefined): string {
  return skipOutsideCi(why) ? `${title} (skipped: ${why})` : title;
}

/**
 * `it`, for a test that runs `binaries`: skipped where one is missing, saying which in its
 * title, except in CI (where it runs, and fails at the missing tool).
 */
export function itNeeding(...binaries: string[]): (title: string, fn: () => Promise<void>) => void {
  const why = missingBinaries(...binaries);
  return (title, fn) => it.skipIf(skipOutsideCi(why))(skipTitle(title, why), fn);
}
