// The public API by name: what `leaderlease` and `leaderlease/core` export at run time (to CommonJS, and
// to ES modules through Node's detection of CommonJS exports) and what their `.d.ts` files declare, held
// against the list committed in tests/fixtures/public-exports.json. A name that appears or disappears
// fails here, so that moving code between files cannot change the API unnoticed. After a deliberate
// change of the API: LEADERLEASE_UPDATE_EXPORTS=1 node --test dist-tests/exports.test.js rewrites the list.
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { test } from 'node:test';

const DIST = resolve(__dirname, '..', 'dist');
const SNAPSHOT = resolve(__dirname, '..', 'tests', 'fixtures', 'public-exports.json');
const ENTRIES = { 'leaderlease': 'index', 'leaderlease/core': 'core' } as const;

interface EntryNames {
  /** `Object.keys(require(entry))`. */
  commonjs: string[];
  /** The names an ES module can import (`Object.keys(await import(entry))`, without `default`). */
  esm: string[];
  /** Every name the entry's `.d.ts` declares (values and types alike). */
  declared: string[];
}

const sorted = (names: Iterable<string>): string[] => [...new Set(names)].sort();

/** The names in an `export { a, type b as c }` list: the exported ones (after `as`). */
function listNames(list: string, file: string): string[] {
  return list
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '')
    .map((s) => {
      const m = /^(?:type\s+)?([A-Za-z_$][\w$]*)(?:\s+as\s+([A-Za-z_$][\w$]*))?$/.exec(s);
      assert.ok(m, `${file}: cannot read the export specifier ${JSON.stringify(s)}`);
      return m[2] ?? m[1]!;
    });
}

/**
 * The names a `.d.ts` emitted by tsc exports: its `export { ... }` lists (with or without `from`), its
 * `export declare const|function|class|enum|namespace`, `export type X =`, `export interface`, and the
 * names of the files it re-exports with `export * from './x.js'` (followed). Any other top-level
 * `export` is an error here, so that a form this reader does not know cannot hide a name.
 */
function declaredNames(file: string, seen = new Set<string>()): string[] {
  if (seen.has(file)) return [];
  seen.add(file);
  // Comments out (none of the forms read here spans one), statements joined onto one line each.
  const text = readFileSync(file, 'utf8')
    .replace(/\/\*[\s\S]*?\*\//g, '')
    .replace(/^\s*\/\/.*$/gm, '');
  const names: string[] = [];
  const lists = /^export\s+(?:type\s+)?\{([^}]*)\}(?:\s+from\s+['"][^'"]+['"])?\s*;/gm;
  for (const m of text.matchAll(lists)) names.push(...listNames(m[1]!, file));
  const stars = /^export\s+\*\s+from\s+['"]([^'"]+)['"]\s*;/gm;
  for (const m of text.matchAll(stars)) {
    const target = m[1]!;
    assert.ok(target.startsWith('.'), `${file}: export * from a package (${target})`);
    const dts = join(dirname(file), target.replace(/\.js$/, '.d.ts'));
    assert.ok(existsSync(dts), `${file}: no ${dts}`);
    names.push(...declaredNames(dts, seen));
  }
  const decls =
    /^export\s+(?:declare\s+)?(?:abstract\s+)?(?:const|let|var|function|class|enum|namespace|interface|type)\s+([A-Za-z_$][\w$]*)/gm;
  for (const m of text.matchAll(decls)) names.push(m[1]!);
  // Every top-level export statement must be one of the forms above.
  for (const line of text.split('\n')) {
    if (!/^export\b/.test(line)) continue;
    const known =
      /^export\s+(?:type\s+)?\{/.test(line) ||
      /^export\s+\*\s+from\s/.test(line) ||
      /^export\s+(?:declare\s+)?(?:abstract\s+)?(?:const|let|var|function|class|enum|namespace|interface|type)\s/.test(line) ||
      /^export\s*\{\s*\}\s*;/.test(line);
    assert.ok(known, `${file}: an export this test cannot read: ${line}`);
  }
  return names;
}

async function entryNames(base: string): Promise<EntryNames> {
  const js = join(DIST, `${base}.js`);
  const commonjs = Object.keys(require(js) as object);
  const esm = Object.keys((await import(js)) as object).filter((n) => n !== 'default');
  return { commonjs: sorted(commonjs), esm: sorted(esm), declared: sorted(declaredNames(join(DIST, `${base}.d.ts`))) };
}

test('the public exports of leaderlease and leaderlease/core are the committed ones', async () => {
  const now: Record<string, EntryNames> = {};
  for (const [entry, base] of Object.entries(ENTRIES)) now[entry] = await entryNames(base);
  if (process.env['LEADERLEASE_UPDATE_EXPORTS'] === '1') {
    writeFileSync(SNAPSHOT, `${JSON.stringify(now, null, 2)}\n`);
  }
  const committed = JSON.parse(readFileSync(SNAPSHOT, 'utf8')) as Record<string, EntryNames>;
  const differences: string[] = [];
  for (const entry of Object.keys(ENTRIES)) {
    const want = committed[entry];
    const got = now[entry]!;
    assert.ok(want, `${SNAPSHOT} has no entry ${entry}`);
    for (const kind of ['commonjs', 'esm', 'declared'] as const) {
      for (const n of want[kind]) if (!got[kind].includes(n)) differences.push(`${entry} (${kind}): lost ${n}`);
      for (const n of got[kind]) if (!want[kind].includes(n)) differences.push(`${entry} (${kind}): new ${n}`);
    }
  }
  assert.deepEqual(differences, [], `the exports differ from ${SNAPSHOT}`);
  // The lists are not empty by accident (a reader that found nothing would agree with an empty list).
  assert.ok(committed['leaderlease']!.declared.includes('LeaderElectorConfig'));
  assert.ok(committed['leaderlease']!.esm.includes('LeaderElectorCore'));
  assert.ok(committed['leaderlease/core']!.commonjs.includes('connectionSettingsFromDataSource'));
});
