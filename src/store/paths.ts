// What a key or an S3 prefix may look like: '/'-separated relative paths. A '.' or '..' segment
// would leave the repository (a local path resolves it, and so does an HTTP URL: s3rver stored
// `s3://bkt/../other` in bucket `other`); an empty segment names a different object than meant.

/** True if `path` ('/'-separated) has an empty, '.' or '..' segment, or a NUL. */
export function hasBadSegment(path: string): boolean {
  return path.includes('\0') || path.split('/').some((s) => s === '' || s === '.' || s === '..');
}

/** S3 and compatible servers' bucket names: letters, digits, '.', '-', '_' (legacy names), never '.' or '..'. */
export function isBucketName(name: string): boolean {
  return /^[A-Za-z0-9._-]+$/.test(name) && name !== '.' && name !== '..';
}
