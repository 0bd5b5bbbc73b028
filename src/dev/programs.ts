// Which programs are on $PATH, without running anything: what the Ceph RGW starter and the
// tests' requirement checks (test/helpers/requirements.ts) both ask.

import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** The names in `programs` that are not an executable file in any $PATH directory, in order. */
export function missingPrograms(programs: readonly string[]): string[] {
  const dirs = (process.env['PATH'] ?? '').split(delimiter).filter((d) => d !== '');
  const found = (program: string): boolean =>
    dirs.some((dir) => {
      try {
        accessSync(join(dir, program), constants.X_OK);
        return true;
      } catch {
        return false;
      }
    });
  return programs.filter((program) => !found(program));
}
