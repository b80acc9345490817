import 'reflect-metadata';

import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import { DataSource, EntitySchema, type MigrationInterface } from 'typeorm';

import {
  LeaderElectionMigrationBase,
  LeaderElectorCore,
  LeaderLease,
  TableMissingError,
  createLeaderLeaseEntity,
  createLeaderLeaseTable,
  upSql,
} from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, waitFor, withClient } from './helpers.js';

/** Columns, constraints and indexes of the lease table, as PostgreSQL reports them. */
async function describeTable(schema: string): Promise<unknown> {
  return withClient(async (c) => {
    const columns = await c.query(
      `SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns
        WHERE table_schema = $1 AND table_name = 'leader_lease' ORDER BY column_name`,
      [schema],
    );
    const constraints = await c.query(
      `SELECT conname, contype, pg_get_constraintdef(oid) AS def FROM pg_constraint
        WHERE conrelid = format('%I.leader_lease', $1::text)::regclass ORDER BY conname`,
      [schema],
    );
    const indexes = await c.query(
      `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = 'leader_lease'
        ORDER BY indexname`,
      [schema],
    );
    return { columns: columns.rows, constraints: constraints.rows, indexes: indexes.rows };
  });
}

function dataSource(schema: string, entities: (Function | EntitySchema<any>)[], extra: object = {}): DataSource {
  return new DataSource({ type: 'postgres', url: DATABASE_URL, schema, entities, ...extra });
}

describe('TypeORM entity and synchronize', () => {
  const schema = randomSchema();
  after(() => dropSchema(schema));

  test('synchronize: true leaves the table created by the SQL migration unchanged', async () => {
    await withClient((c) => c.query(upSql(schema)));
    const before = await describeTable(schema);
    assert.equal((before as { columns: unknown[] }).columns.length, 6);

    for (const entity of [LeaderLease, createLeaderLeaseEntity(schema)]) {
      // What synchronize would run: nothing.
      const probe = dataSource(schema, [entity]);
      await probe.initialize();
      try {
        const pending = await probe.driver.createSchemaBuilder().log();
        assert.deepEqual(
          pending.upQueries.map((q) => q.query),
          [],
          `${typeof entity === 'function' ? 'LeaderLease' : 'createLeaderLeaseEntity()'} needs no change`,
        );
      } finally {
        await probe.destroy();
      }
      // And running it changes nothing.
      const ds = dataSource(schema, [entity], { synchronize: true });
      await ds.initialize();
      await ds.destroy();
      assert.deepEqual(await describeTable(schema), before);
    }
  });

  test('the comparison does see a difference (an entity without renewed_at would drop it)', async () => {
    await withClient((c) => c.query(upSql(schema)));
    const full = createLeaderLeaseEntity(schema).options;
    const { renewedAt: _dropped, ...columns } = full.columns;
    const partial = new EntitySchema({ ...full, name: 'PartialLease', columns });
    const ds = dataSource(schema, [partial]);
    await ds.initialize();
    try {
      const pending = await ds.driver.createSchemaBuilder().log();
      assert.ok(
        pending.upQueries.some((q) => /DROP COLUMN "renewed_at"/.test(q.query)),
        pending.upQueries.map((q) => q.query).join('\n'),
      );
    } finally {
      await ds.destroy();
    }
  });

  test('createLeaderLeaseTable() returns a TypeORM Table of the same shape', async () => {
    const table = createLeaderLeaseTable(schema);
    assert.equal(table.name, 'leader_lease');
    assert.equal(table.schema, schema);
    assert.deepEqual(
      table.columns.map((c) => c.name),
      ['id', 'leader_id', 'expires_at', 'created_at', 'term', 'renewed_at'],
    );
    assert.deepEqual(table.primaryColumns.map((c) => c.name), ['id']);
    assert.deepEqual(table.indices.map((i) => i.name), ['leader_lease_expires']);
    assert.deepEqual(table.checks.map((c) => c.expression), ['expires_at > created_at']);
    assert.equal(createLeaderLeaseTable().schema, 'public');
  });
});

describe('original README: Standalone example', () => {
  const schema = randomSchema();
  let ds: DataSource | undefined;
  const electors: LeaderElectorCore[] = [];
  after(async () => {
    await Promise.allSettled(electors.map((e) => e.shutdown()));
    await ds?.destroy();
    await dropSchema(schema);
  });

  test('new LeaderElectorCore(dataSource.getRepository(LeaderLease), config) starts the election', async () => {
    ds = new DataSource({ type: 'postgres', url: DATABASE_URL, entities: [LeaderLease] });
    await ds.initialize();
    for (let i = 0; i < 2; i++) {
      electors.push(new LeaderElectorCore(ds.getRepository(LeaderLease), { ...FAST, schema, lockId: 3 }));
    }
    assert.ok(await waitFor(() => electors.filter((e) => e.amILeader()).length === 1, 5000), 'one leads');
    const rows = await withClient((c) => c.query(`SELECT leader_id FROM "${schema}".leader_lease WHERE id = 3`));
    assert.equal(rows.rows[0]?.leader_id, electors.find((e) => e.amILeader())!.instanceId);
  });
});

describe('original README: Migration example', () => {
  const schema = randomSchema();
  let ds: DataSource | undefined;
  let elector: LeaderElectorCore | undefined;
  after(async () => {
    await elector?.shutdown();
    await ds?.destroy().catch(() => undefined);
    await dropSchema(schema);
  });

  test('a LeaderElectionMigrationBase subclass run by TypeORM creates the table; createTableOnInit: false then works', async () => {
    // Before the migration, the runtime configuration refuses to start with a clear error.
    await assert.rejects(
      LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, createTableOnInit: false }),
      (err) => err instanceof TableMissingError,
    );

    class LeaderElectionMigration1700000000000 extends LeaderElectionMigrationBase {
      override schema = schema;
      override name = 'LeaderElectionMigration1700000000000';
    }
    ds = new DataSource({
      type: 'postgres',
      url: DATABASE_URL,
      migrations: [LeaderElectionMigration1700000000000],
      migrationsTableName: `migrations_${schema}`,
    });
    await ds.initialize();
    const ran = await ds.runMigrations();
    assert.deepEqual(ran.map((m) => m.name), ['LeaderElectionMigration1700000000000']);

    elector = await LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, createTableOnInit: false });
    assert.ok(await waitFor(() => elector!.amILeader(), 5000), 'leads on the migrated table');
    await elector.shutdown();

    // down() drops it again.
    await ds.undoLastMigration();
    const left = await withClient((c) =>
      c.query(`SELECT 1 FROM information_schema.tables WHERE table_schema = $1 AND table_name = 'leader_lease'`, [schema]),
    );
    assert.equal(left.rowCount, 0);
    await withClient((c) => c.query(`DROP TABLE IF EXISTS public."migrations_${schema}"`));
    const migration: MigrationInterface = new LeaderElectionMigration1700000000000();
    assert.equal(typeof migration.up, 'function');
  });
});
