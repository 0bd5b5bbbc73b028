// The cdp-s3 library API. The CLI (src/cli) is a thin layer over these functions.

export { backup, type BackupOptions, type BackupResult } from './core/backup.js';
export { parseChangedRanges, type ByteRange } from './core/changed-ranges.js';
export { init, type InitOptions, type InitResult } from './core/init.js';
export { addKey, changePassword, listKeys, removeKey, type KeyInfo } from './core/keys.js';
export { unlockStore, type PasswordSource } from './repo/unlock.js';
export type { Compression } from './repo/pieces.js';
export { log, type LogEntry, type LogResult } from './core/log.js';
export { parsePointSelector, type PointSelector } from './core/points.js';
export type { Progress } from './core/progress.js';
export {
  executeRestore,
  planRestore,
  type ExecuteRestoreOptions,
  type PlanRestoreOptions,
  type RestorePlan,
  type RestoreResult,
} from './core/restore.js';
export * from './errors.js';
export type { RepoConfig } from './repo/config.js';
export {
  acquireWriterLock,
  forceUnlock,
  listLocks,
  type AcquireLockOptions,
  type LockEntry,
  type LockInfo,
  type WriterLock,
} from './repo/lock.js';
export { openStore } from './store/open.js';
export type { ObjectStore } from './store/types.js';
export { scan, type ScanOptions, type ScanResult, type ScanHooks } from './core/scan.js';
export { verify, type VerifyOptions, type VerifyResult, type VerifyProblem } from './core/verify.js';
export { prune, type PruneOptions, type PruneResult, DEFAULT_PRUNE_GRACE_MS } from './core/prune.js';
export { undelete, type UndeleteResult } from './core/undelete.js';
export { type ObjectLockReport, type RetentionCheck } from './core/retention.js';
export type { ObjectLockPolicy } from './repo/retaining-store.js';
export { applyRetention, checkRetentionPolicy, type RetentionPolicy, type RetentionDecision } from './model/retention.js';
export { InProcessWriter, QuiescentSource, type ChangeSource, type ChangeRecorder } from './volume/changes.js';
export { DirtyRegionLog } from './volume/dirty-region-log.js';
