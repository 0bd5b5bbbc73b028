// undelete: brings back what deletes without a version hid. In a versioned bucket (every bucket
// with Object Lock), a delete by key only puts a delete marker in front of the object: whoever
// holds the writers' credentials (or ransomware on the host) can make a repository look empty,
// but under Object Lock the versions stay. undelete removes the markers in front of every object
// the history needs, so its newest version is current again. cdp-s3 itself never hides a needed
// object: prune deletes by version, and what it rewrites or deletes by key is never retained
// (locks, status, prune records), except `key remove`, whose key files come back too.
//
// It reads no config (that may be hidden too) and takes no lock (locks may be sealed with a key
// it cannot read yet): run it while no other cdp-s3 command runs on the repository.

import { retainedKey } from '../repo/retaining-store.js';
import type { ObjectStore } from '../store/types.js';
import { deleteObjects } from './retention.js';

export interface UndeleteResult {
  dryRun: boolean;
  /** Objects brought back (dry run: would be), in key order. */
  restored: string[];
  /** Key files among them (a `key remove` is undone too: remove those again). */
  keyFiles: number;
  /** Delete markers removed. */
  markers: number;
}

export async function undelete(options: { store: ObjectStore; dryRun?: boolean; signal?: AbortSignal }): Promise<UndeleteResult> {
  const { store, signal } = options;
  const dryRun = options.dryRun === true;
  // Per key: its markers, and whether the newest entry is one while a version with bytes exists.
  const restored: string[] = [];
  const markers: Array<{ key: string; versionId: string }> = [];
  let key: string | undefined;
  let keyMarkers: Array<{ key: string; versionId: string }> = [];
  let hidden = false;
  let hasData = false;
  const finish = (): void => {
    if (key !== undefined && hidden && hasData && retainedKey(key)) {
      restored.push(key);
      markers.push(...keyMarkers);
    }
  };
  for await (const v of store.listVersions('', signal === undefined ? {} : { signal })) {
    if (v.key !== key) {
      finish();
      key = v.key;
      keyMarkers = [];
      hidden = false;
      hasData = false;
    }
    if (v.deleteMarker) {
      if (v.versionId !== undefined) keyMarkers.push({ key: v.key, versionId: v.versionId });
      if (v.latest) hidden = true;
    } else {
      hasData = true;
    }
  }
  finish();
  if (!dryRun) await deleteObjects(store, markers, signal);
  return { dryRun, restored, keyFiles: restored.filter((k) => k.startsWith('keys/')).length, markers: markers.length };
}
