import 'reflect-metadata';

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';

import { DataSource } from 'typeorm';

import { LeaderElectionMigrationBase, LeaderElectorModule, LeaderElectorService } from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, waitFor, withClient } from './helpers.js';

// A file of its own: @nestjs/typeorm keeps the autoLoadEntities registrations of every app in a
// process-wide store, so entities of other tests' (dropped) schemas would be synchronized here too.

const db = new URL(DATABASE_URL);
const typeOrmSettings = {
  type: 'postgres' as const,
  host: db.hostname,
  port: Number(db.port || 5432),
  username: decodeURIComponent(db.username) || 'postgres',
  ...(db.password ? { password: decodeURIComponent(db.password) } : {}),
  database: db.pathname.slice(1) || 'postgres',
};

describe('synchronize: true with the Quick Start', () => {
  const schema = randomSchema();
  after(() => dropSchema(schema));

  test('an app with synchronize and autoLoadEntities leaves the lease table as the migration made it, and terms grow after it is recreated', async () => {
    const snapshot = () =>
      withClient(async (c) => {
        const cols = await c.query(
          `SELECT column_name, data_type, column_default, is_nullable FROM information_schema.columns
            WHERE table_schema = $1 AND table_name = 'leader_lease' ORDER BY 1`,
          [schema],
        );
        const cons = await c.query(
          `SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
            WHERE conrelid = format('%I.leader_lease', $1::text)::regclass ORDER BY 1`,
          [schema],
        );
        const idx = await c.query(`SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY 1`, [schema]);
        return { cols: cols.rows, cons: cons.rows, idx: idx.rows };
      });
    const open = async () => {
      const m = await Test.createTestingModule({
        imports: [
          TypeOrmModule.forRoot({ ...typeOrmSettings, autoLoadEntities: true, synchronize: true }),
          LeaderElectorModule.forRoot({ schema, ...FAST }),
        ],
      }).compile();
      const app = m.createNestApplication({ logger: false });
      await app.init();
      return app;
    };
    // TypeORM's synchronize creates tables, not schemas: the app's schema exists, as it would in production.
    await withClient((c) => c.query(`CREATE SCHEMA "${schema}"`));
    // First start: TypeORM's synchronize creates the table, then the elector adds what it lacks (the term
    // sequence) with the SQL migration.
    let app = await open();
    const elector = app.get(LeaderElectorService);
    assert.ok(await waitFor(() => elector.amILeader(), 5000));
    await app.close();
    const before = await snapshot();
    assert.equal(before.cols.length, 6);
    assert.deepEqual(
      before.cons.map((c) => c.conname),
      ['leader_lease_check', 'leader_lease_pkey'],
    );
    // Second start on the existing table: synchronize changes nothing.
    app = await open();
    const second = app.get(LeaderElectorService);
    assert.ok(await waitFor(() => second.amILeader(), 5000));
    const earlier = second.term()!;
    // The migration class's down (the table and its sequence dropped) under the live leader, then a start
    // on the empty schema: synchronize creates the table again, the elector adds the sequence, and the
    // new leadership's term is above the earlier one.
    const migration = new (class extends LeaderElectionMigrationBase {
      override schema = schema;
      override name = 'LeaderElection1700000000000';
    })();
    const runner = app.get(DataSource).createQueryRunner();
    try {
      await migration.down(runner);
    } finally {
      await runner.release();
    }
    await app.close();
    const gone = await withClient((c) =>
      c.query(
        `SELECT to_regclass(format('%I.leader_lease', $1::text)) AS t,
                to_regclass(format('%I.leader_lease_term_seq', $1::text)) AS s`,
        [schema],
      ),
    );
    assert.deepEqual(gone.rows, [{ t: null, s: null }]);
    app = await open();
    try {
      const third = app.get(LeaderElectorService);
      assert.ok(await waitFor(() => third.amILeader(), 5000));
      assert.ok(third.term()! > earlier, `term ${third.term()} after the recreated table, earlier ${earlier}`);
    } finally {
      await app.close();
    }
    assert.deepEqual(await snapshot(), before);
  });
});
