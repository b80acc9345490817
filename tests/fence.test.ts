// The fence the database enforces (LeaderElectorCore.fence): a leader paused past its lease has its
// commit refused once another leader took over; a live leader's fenced transaction commits.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { after, describe, test } from 'node:test';
import { join } from 'node:path';

import { DataSource } from 'typeorm';

import { FencedError, LeaderElectionConfigError, LeaderElectorCore } from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, waitFor, withClient } from './helpers.js';

const PACKAGE = join(__dirname, '..', 'dist', 'index.js');

/** A candidate process that leads, opens a transaction with a write, and on "fence" tries to commit it. */
const CHILD = `
  const { Client } = require('pg');
  const { LeaderElectorCore, FencedError } = require(process.env.PKG);
  const send = (m) => process.stdout.write(JSON.stringify(m) + '\\n');
  (async () => {
    const e = new LeaderElectorCore(process.env.DATABASE_URL, JSON.parse(process.env.CONFIG));
    e.on('error', (err) => send({ type: 'error', message: String(err) }));
    await e.ready();
    while (!e.amILeader()) await new Promise((r) => setTimeout(r, 10));
    const term = e.term();
    const c = new Client({ connectionString: process.env.DATABASE_URL });
    await c.connect();
    await c.query('BEGIN');
    await c.query('INSERT INTO ' + process.env.WORK + ' VALUES ($1)', [String(term)]);
    send({ type: 'in-transaction', term });
    for await (const line of require('node:readline').createInterface({ input: process.stdin })) {
      if (line !== 'fence') continue;
      const out = { type: 'fenced', leaderNow: e.amILeader() };
      try {
        await e.fence(c, term);
        await c.query('COMMIT');
        out.committed = true;
      } catch (err) {
        out.committed = false;
        out.typed = err instanceof FencedError;
        out.code = err.code;
        out.message = err.message;
        await c.query('ROLLBACK');
      }
      try {
        await e.fence(c);
        out.withoutTerm = 'passed';
      } catch (err) {
        out.withoutTerm = err.code + ' ' + err.term;
      }
      send(out);
      await c.end();
      await e.shutdown();
      process.exit(0); // stdin (the command channel) would keep the process alive

    }
  })().catch((err) => { send({ type: 'error', message: String(err && err.stack || err) }); process.exit(1); });
`;

describe('fence', () => {
  const schemas: string[] = [];
  after(async () => {
    for (const s of schemas) await dropSchema(s);
  });

  test('a leader paused past its lease has its commit refused by the database after a takeover', async () => {
    const schema = randomSchema();
    schemas.push(schema);
    const work = `"${schema}".work`;
    const config = { ...FAST, schema, lockId: 41, instanceId: 'paused' };
    // The table (and fence function) first, then the work table beside it.
    const probe = await LeaderElectorCore.connect(DATABASE_URL, { ...config, instanceId: 'probe', lockId: 40 });
    await probe.shutdown();
    await withClient((c) => c.query(`CREATE TABLE ${work} (term BIGINT NOT NULL)`));

    const child = spawn(process.execPath, ['-e', CHILD], {
      env: { ...process.env, PKG: PACKAGE, DATABASE_URL, CONFIG: JSON.stringify(config), WORK: work },
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    const exited = once(child, 'exit');
    const lines = createInterface({ input: child.stdout! });
    const messages: Record<string, unknown>[] = [];
    lines.on('line', (l) => messages.push(JSON.parse(l) as Record<string, unknown>));
    const next = async (type: string): Promise<Record<string, unknown>> => {
      assert.ok(await waitFor(() => messages.some((m) => m['type'] === type || m['type'] === 'error'), 20000), `no ${type}`);
      const m = messages.find((x) => x['type'] === type || x['type'] === 'error')!;
      assert.notEqual(m['type'], 'error', String(m['message']));
      return m;
    };
    let other: LeaderElectorCore | null = null;
    try {
      const { term } = (await next('in-transaction')) as { term: number };
      child.kill('SIGSTOP');
      other = await LeaderElectorCore.connect(DATABASE_URL, { ...config, instanceId: 'other' });
      assert.ok(await waitFor(() => other!.amILeader(), 3 * FAST.leaseDuration + 2000), 'no takeover while paused');
      assert.ok(other.term()! > term);
      child.kill('SIGCONT');
      child.stdin!.write('fence\n');
      const result = await next('fenced');
      assert.equal(result['committed'], false, 'the paused leader committed after the takeover');
      assert.equal(result['typed'], true);
      assert.equal(result['code'], 'ERR_FENCED');
      assert.match(String(result['message']), /held by term/);
      assert.equal(result['withoutTerm'], 'ERR_FENCED null', 'without a term of its own it is refused locally');
      const rows = await withClient((c) => c.query(`SELECT count(*)::int AS n FROM ${work}`));
      assert.equal(rows.rows[0].n, 0);
      await exited;
    } finally {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
      await other?.shutdown();
    }
  });

  test('a live leader commits through a TypeORM transaction; a bad runner is a config error', async () => {
    const schema = randomSchema();
    schemas.push(schema);
    const e = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, lockId: 42 });
    const ds = new DataSource({ type: 'postgres', url: DATABASE_URL });
    await ds.initialize();
    try {
      assert.ok(await waitFor(() => e.amILeader(), 5000));
      await ds.query(`CREATE TABLE "${schema}".work (term BIGINT NOT NULL)`);
      const term = e.term()!;
      await ds.transaction(async (m) => {
        await m.query(`INSERT INTO "${schema}".work VALUES ($1)`, [String(term)]);
        assert.equal(await e.fence(m), term);
      });
      const rows = await ds.query(`SELECT term::text AS t FROM "${schema}".work`);
      assert.deepEqual(rows, [{ t: String(term) }]);
      // A term that never led this lock: the database refuses it inside the transaction.
      await assert.rejects(
        ds.transaction(async (m) => {
          await m.query(`INSERT INTO "${schema}".work VALUES (0)`);
          await e.fence(m, term - 1);
        }),
        (err: unknown) => err instanceof FencedError && err.term === term - 1 && err.lockId === 42,
      );
      assert.equal((await ds.query(`SELECT count(*)::int AS n FROM "${schema}".work`))[0].n, 1);
      await assert.rejects(e.fence({} as never), LeaderElectionConfigError);
    } finally {
      await ds.destroy();
      await e.shutdown();
    }
  });
});

