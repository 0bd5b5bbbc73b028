// An Object Lock repository's store (docs/FORMAT.md, "Object Lock"): every object the history
// needs is put under a retention of the repository's lock days, so no one holding the writers'
// credentials (or ransomware on the protected host) can delete or overwrite it before then.
// Objects that change or go away as a matter of course (locks, protect status, prune's candidate
// records, the retention record) are put without one. prune extends the retention of what is
// still needed (core/retention.ts) and deletes only objects whose retention has run out.

import { InvalidArgumentError } from '../errors.js';
import { DelegatingStore } from '../store/delegating.js';
import { LOCK_MODES, type LockMode, type ObjectStore, type PutOptions, type Retention } from '../store/types.js';
import { LOCK_PREFIX } from './keys.js';
import { PROTECT_STATUS_PREFIX } from './protect-status.js';
import { PRUNE_PREFIX } from './records.js';

export const DAY_MS = 86_400_000;
/** S3 takes retention periods up to 100 years; more is surely a typo. */
export const MAX_LOCK_DAYS = 36_500;

/** The repository's Object Lock: the mode every retention is set in, and how long it runs from each put or extension. */
export interface ObjectLockPolicy {
  mode: LockMode;
  days: number;
}

/** The record of the last retention extension (core/retention.ts): not retained, it is rewritten. */
export const RETENTION_KEY = 'retention';

/** Keys put without a retention: they are rewritten or deleted in normal operation. */
const UNRETAINED_PREFIXES = [LOCK_PREFIX, PROTECT_STATUS_PREFIX, PRUNE_PREFIX];

/** Whether the object at `key` is one the history needs, put under retention in an Object Lock repository. */
export function retainedKey(key: string): boolean {
  return key !== RETENTION_KEY && !UNRETAINED_PREFIXES.some((prefix) => key.startsWith(prefix));
}

/** The prefixes and single keys whose objects are never retained (what the sweep lists the versions of). */
export const UNRETAINED = { prefixes: UNRETAINED_PREFIXES, keys: [RETENTION_KEY] } as const;

export function checkObjectLockPolicy(policy: { mode: string; days: number }): ObjectLockPolicy {
  if (!(LOCK_MODES as readonly string[]).includes(policy.mode)) {
    throw new InvalidArgumentError(`--object-lock must be governance or compliance, not ${JSON.stringify(policy.mode)}`);
  }
  if (!Number.isInteger(policy.days) || policy.days < 1 || policy.days > MAX_LOCK_DAYS) {
    throw new InvalidArgumentError(`--lock-days must be a whole number of days from 1 to ${MAX_LOCK_DAYS}, not ${policy.days}`);
  }
  return { mode: policy.mode as LockMode, days: policy.days };
}

/** The retention a put or an extension at `now` sets (whole seconds: S3 keeps no finer). */
export function retentionFrom(policy: ObjectLockPolicy, now: number): Retention {
  return { mode: policy.mode, until: Math.ceil((now + policy.days * DAY_MS) / 1000) * 1000 };
}

export class RetainingStore extends DelegatingStore {
  constructor(
    inner: ObjectStore,
    readonly policy: ObjectLockPolicy,
    /** Wall-clock ms since the epoch (the server compares retention with its own clock). */
    private readonly clock: () => number = Date.now,
  ) {
    super(inner);
  }

  override put(key: string, body: Uint8Array, options?: PutOptions): Promise<void> {
    if (!retainedKey(key)) return this.inner.put(key, body, options);
    return this.inner.put(key, body, { ...options, retention: retentionFrom(this.policy, this.clock()) });
  }
}

/** The Object Lock policy of a store opened for an Object Lock repository (unlock.ts), or undefined. */
export function storeObjectLock(store: ObjectStore): ObjectLockPolicy | undefined {
  let at: ObjectStore = store;
  while (!(at instanceof RetainingStore) && at instanceof DelegatingStore) at = at.wrapped;
  return at instanceof RetainingStore ? at.policy : undefined;
}
