// The layer rule of docs/ARCHITECTURE.md, checked on the source: every import of src/ points
// down the list of layers (or stays within its own), and `cdp-s3 status` loads no NBD server.

import { readFile, readdir } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = resolve(import.meta.dirname, '..', 'src');

/** Top to bottom; a module may import its own layer and the ones below it. */
const LAYERS = [
  ['cli', 'dev', 'demo', 'index.ts'],
  ['core'],
  ['nbd'],
  ['repo'],
  ['volume'],
  ['model'],
  ['store'],
  ['kernels'],
  ['util', 'errors.ts', 'types'],
];

function layerOf(file: string): number {
  const top = relative(SRC, file).split('/')[0]!;
  const layer = LAYERS.findIndex((names) => names.includes(top));
  if (layer < 0) throw new Error(`${relative(SRC, file)} is in no layer of the architecture: add it to LAYERS and docs/ARCHITECTURE.md`);
  return layer;
}

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await sources(path)));
    else if (entry.name.endsWith('.ts')) out.push(path);
  }
  return out;
}

/** The src/ files a file imports (relative imports, static and dynamic). */
async function importsOf(file: string): Promise<string[]> {
  const text = await readFile(file, 'utf8');
  const out: string[] = [];
  for (const match of text.matchAll(/(?:from|import)\s*\(?\s*'(\.[^']+)'/g)) {
    out.push(resolve(dirname(file), match[1]!.replace(/\.js$/, '.ts')));
  }
  return out;
}

describe('architecture', () => {
  it('imports point down the layers only', async () => {
    const wrong: string[] = [];
    for (const file of await sources(SRC)) {
      for (const imported of await importsOf(file)) {
        if (!imported.startsWith(SRC)) continue;
        if (layerOf(imported) < layerOf(file)) wrong.push(`${relative(SRC, file)} → ${relative(SRC, imported)}`);
      }
    }
    expect(wrong).toEqual([]);
  });

  it('`cdp-s3 status` loads no NBD server (commands are loaded when they run)', async () => {
    // What the CLI entry and the status command import, transitively, at load time.
    const seen = new Set<string>();
    const visit = async (file: string): Promise<void> => {
      if (seen.has(file)) return;
      seen.add(file);
      const text = await readFile(file, 'utf8');
      // Static imports only: a dynamic import() runs when a command is chosen.
      for (const match of text.matchAll(/^(?:import|export)[^;]*?from\s*'(\.[^']+)'/gms)) {
        if (/^import\s+type\s/.test(match[0]) || /^export\s+type\s/.test(match[0])) continue;
        await visit(resolve(dirname(file), match[1]!.replace(/\.js$/, '.ts')));
      }
    };
    await visit(join(SRC, 'cli', 'main.ts'));
    await visit(join(SRC, 'cli', 'status.ts'));
    expect([...seen].map((f) => relative(SRC, f)).filter((f) => f.startsWith('nbd/') || f.startsWith('core/protect') || f.startsWith('core/serve'))).toEqual([]);
  });
});
