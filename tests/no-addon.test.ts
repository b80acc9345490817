// Without the native addon (a platform no prebuilt binary fits, simulated by a child process in which
// every native module fails to load): the package still loads, renders the schema SQL exactly as the
// native core does, and a TypeORM migration with its migration class creates the table that the elector
// then uses.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, test } from 'node:test';

import { LeaderElectorCore } from '../dist/index.js';
import * as native from '../native/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, waitFor, withClient } from './helpers.js';
import { NO_ADDON_HOOK } from './packed-app.js';

const DIST_INDEX = resolve(__dirname, '../dist/index.js');

const dir = mkdtempSync(join(tmpdir(), 'leaderlease-no-addon-'));
const hook = join(dir, 'no-addon.cjs');
writeFileSync(hook, NO_ADDON_HOOK);
after(() => rmSync(dir, { recursive: true, force: true }));

interface Child {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CommonJS `script` in a fresh Node in which no native module can load. */
function runWithoutAddon(script: string, env: NodeJS.ProcessEnv = {}): Promise<Child> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, ['--require', hook, '-e', script], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, stdout, stderr });
    });
  });
}

async function json(script: string, env?: NodeJS.ProcessEnv): Promise<Record<string, any>> {
  const r = await runWithoutAddon(script, env);
  assert.equal(r.code, 0, `exit ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, any>;
}

// Hostile and unusual schema names: quotes, placeholders, SQL, Unicode, a lone surrogate, empty, long.
const SCHEMAS: (string | null)[] = [
  null,
  'public',
  'My"Schema',
  '""',
  'x{{ddl_lock}}',
  '{{schema}}',
  '{{{schema}}}',
  'a"; DROP TABLE users; --',
  "it's",
  'back\\slash',
  'new\nline',
  'ünïcödé 😀 ß',
  'lone \ud800 surrogate',
  '',
  ' ',
  'a.b',
  'x'.repeat(200),
];

test('upSql/downSql without the addon equal the native rendering byte for byte', async () => {
  const out = await json(`
    const ll = require(${JSON.stringify(DIST_INDEX)});
    const schemas = ${JSON.stringify(SCHEMAS)};
    const up = schemas.map((s) => (s === null ? ll.upSql() : ll.upSql(s)));
    const down = schemas.map((s) => (s === null ? ll.downSql() : ll.downSql(s)));
    process.stdout.write(JSON.stringify({ up, down, dlopenCalls: globalThis.__dlopenCalls }));
  `);
  assert.equal(out['dlopenCalls'], 0, 'the SQL helpers tried to load a native module');
  SCHEMAS.forEach((s, i) => {
    const schema = s ?? undefined;
    assert.equal(out['up'][i], native.upSql(schema), `upSql(${JSON.stringify(s)})`);
    assert.equal(out['down'][i], native.downSql(schema), `downSql(${JSON.stringify(s)})`);
  });
  // Not vacuous: the names give distinct SQL, with the schema quoted and the DDL lock key filled in.
  assert.equal(new Set(out['up']).size, SCHEMAS.length - 1, 'only null and "public" render alike');
  assert.match(out['up'][2], /CREATE TABLE IF NOT EXISTS "My""Schema"\.leader_lease/);
  assert.match(out['up'][2], /SELECT pg_advisory_xact_lock\(-?\d+, 0\);/);
  assert.ok(out['up'].every((sql: string, i: number) => i === 4 || i === 5 || i === 6 || !sql.includes('{{')));
});

test('a TypeORM migration runs (up and down) with the addon unavailable; the elector runs on its table', async (t) => {
  const schema = randomSchema();
  t.after(() => dropSchema(schema));
  // TypeORM keeps its own `migrations` table in the DataSource's schema, which must exist first.
  await withClient((c) => c.query(`CREATE SCHEMA "${schema}"`));

  const migrate = (direction: 'up' | 'down') =>
    json(
      `
      const ll = require(${JSON.stringify(DIST_INDEX)});
      const { DataSource } = require('typeorm');
      const warnings = [];
      process.on('warning', (w) => warnings.push(w.code));
      class LeaderElectionMigration1700000000000 extends ll.LeaderElectionMigrationBase {
        schema = process.env.LL_SCHEMA;
        name = 'LeaderElectionMigration1700000000000';
      }
      (async () => {
        const ds = new DataSource({
          type: 'postgres', url: process.env.DATABASE_URL, schema: process.env.LL_SCHEMA,
          migrations: [LeaderElectionMigration1700000000000], logging: false,
        });
        await ds.initialize();
        if (${JSON.stringify(direction)} === 'up') {
          const ran = await ds.runMigrations({ transaction: 'each' });
          if (ran.length !== 1) throw new Error('ran ' + ran.length + ' migrations');
        } else {
          await ds.undoLastMigration({ transaction: 'each' });
        }
        await ds.destroy();
        const dlopenAfterMigration = globalThis.__dlopenCalls;
        let coreError = null;
        try {
          ll.LeaderElectorCore;
        } catch (err) {
          coreError = String(err);
        }
        await new Promise((r) => setImmediate(r));
        process.stdout.write(JSON.stringify({ dlopenAfterMigration, coreError, dlopen: globalThis.__dlopenCalls, warnings }));
      })().catch((err) => { console.error(err); process.exitCode = 1; });
    `,
      { LL_SCHEMA: schema, DATABASE_URL },
    );

  const up = await migrate('up');
  assert.equal(up['dlopenAfterMigration'], 0, 'the migration tried to load a native module');
  // Reading what does need the addon fails with the loader's error, and a warning says what is missing.
  assert.ok(up['coreError'], 'LeaderElectorCore was readable without the addon');
  assert.ok(up['dlopen'] > 0, 'LeaderElectorCore failed without trying to load the addon');
  assert.deepEqual(up['warnings'], ['LEADERLEASE_NO_ADDON']);

  // The table is the one the elector needs: it runs on it without creating anything.
  const elector = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, createTableOnInit: false });
  try {
    assert.ok(await waitFor(() => elector.amILeader(), 10_000), 'no leader on the migrated table');
    assert.ok((elector.term() ?? 0) >= 1);
  } finally {
    await elector.shutdown();
  }

  const down = await migrate('down');
  assert.equal(down['dlopenAfterMigration'], 0);
  const left = await withClient((c) =>
    c.query(`SELECT relname FROM pg_class WHERE relnamespace = $1::regnamespace AND relname LIKE 'leader_lease%'`, [
      `"${schema}"`,
    ]),
  );
  assert.deepEqual(left.rows, [], 'the down migration left the table or sequence');
});
