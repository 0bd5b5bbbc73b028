// Parsing and printing byte sizes and durations for the CLI.

import { UsageError } from '../errors.js';
import { COMPRESSION_LEVELS, type Compression } from '../repo/pieces.js';

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

/** "1MiB", "64k", "10G", "1048576" → bytes. Bare K/M/G/T are binary, KB/MB/... decimal. */
export function parseSize(text: string, option: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = UNITS[(m?.[2] ?? '').toLowerCase()];
  const value = m === null || unit === undefined ? Number.NaN : Number(m[1]) * unit;
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new UsageError(`${option} ${JSON.stringify(text)} is not a size: use bytes or a unit, e.g. 1MiB, 64KiB, 10GiB`);
  }
  return value;
}

export function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${units[unit]}`;
}

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, '0');
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000 };

/** "500ms", "5s", "10m", "24h", "7d" → milliseconds (a bare number is seconds). */
export function parseDuration(text: string, option: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  const unit = m?.[2] === '' ? 1000 : DURATION_UNITS[(m?.[2] ?? '').toLowerCase()];
  const value = m === null || unit === undefined ? Number.NaN : Number(m[1]) * unit;
  if (!Number.isFinite(value) || value <= 0) {
    throw new UsageError(`${option} ${JSON.stringify(text)} is not a duration: use e.g. 500ms, 5s, 10m, 24h`);
  }
  return Math.round(value);
}

/**
 * An NBD listen address, the one parser of serve and protect: "HOST:PORT" or "[IPV6]:PORT" (port
 * 0: any free port). A host is required: every interface must be asked for (0.0.0.0:PORT), never
 * implied by ":PORT", since the export is unauthenticated.
 */
export function parseListen(text: string, option = '--listen'): { host: string; port: number } {
  const m = /^\[([0-9a-fA-F:.%a-zA-Z]+)\]:(\d{1,5})$/.exec(text) ?? /^([^\s:[\]/]+):(\d{1,5})$/.exec(text);
  const port = m === null ? Number.NaN : Number(m[2]);
  if (m === null || !Number.isInteger(port) || port > 65535) {
    const noHost = /^:\d+$/.test(text) ? ` (a host is required: 0.0.0.0${text} listens on every interface)` : '';
    throw new UsageError(`${option} ${JSON.stringify(text)} is not an address: use HOST:PORT or [IPV6]:PORT, e.g. 127.0.0.1:10809 or [::1]:10809${noHost}`);
  }
  return { host: m[1]!, port };
}

/** "1 region", "3 regions". */
export function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

/** --compression: off, fast or max. */
export function parseCompression(value: string, flag = '--compression'): Compression {
  if (!(COMPRESSION_LEVELS as readonly string[]).includes(value)) throw new UsageError(`${flag} must be one of ${COMPRESSION_LEVELS.join(', ')}, got ${JSON.stringify(value)}`);
  return value as Compression;
}

