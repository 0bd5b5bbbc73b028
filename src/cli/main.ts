#!/usr/bin/env node
// Entry point of the cdp-s3 command: signals, then the command line (program.ts).

import { realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { interruption } from './context.js';
import { EXIT } from './exit-codes.js';
import { run } from './program.js';

function isMain(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return realpathSync(entry) === fileURLToPath(import.meta.url);
  } catch {
    return false;
  }
}

if (isMain()) {
  // The SDK warns that its releases from 2027 on need Node 22; the lockfile pins this one.
  process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
  // Ctrl-C: the first one cancels cleanly (nothing half-done is committed); a second one exits.
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (interrupted) process.exit(EXIT.interrupted);
    interrupted = true;
    process.stderr.write(`\ncdp-s3: ${signal}: cancelling (again to exit at once)\n`);
    interruption.abort(new Error(signal));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  const code = await run(process.argv.slice(2));
  process.exitCode = code;
}
