// The code blocks of nest-leader-election 1.1.2's README, as a user who switches packages runs them: the
// packed package installed with the README's install line (import changed only, newest NestJS and
// TypeORM), each TypeScript block written to a file of a Nest-style project (CommonJS, decorators with
// metadata, the compiler's defaults otherwise), compiled by tsc, and run against the real PostgreSQL in a
// database of its own. The only edits are the ones the README asks the reader to make: the package name,
// the connection values (`// ... configuration`, host/port/user/password/database) and, for blocks that
// are fragments (the forRoot settings, the service), the few lines that put them in an app.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { Client } from 'pg';

import { DATABASE_URL } from './helpers.js';
import { type Packed, REPO, describeRun, installApp, pack, run } from './packed-app.js';

const db = `ll_orig_${process.pid}_${Date.now() % 100000}`;
const base = new URL(DATABASE_URL);
const conn = {
  host: base.hostname,
  port: Number(base.port || 5432),
  username: decodeURIComponent(base.username || 'postgres'),
  password: decodeURIComponent(base.password || 'postgres'),
  database: db,
};

/** The README's connection block with this machine's values (the README's own: localhost/5432/postgres/postgres/test). */
const CONNECTION = `host: '${conn.host}',
port: ${conn.port},
username: '${conn.username}',
password: '${conn.password}',
database: '${conn.database}',`;

const FILES: Record<string, string> = {
  // Quick Start, 1. Import Module (schema 'schema_name').
  'src/app.module.ts': `// app.module.ts
import { Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { LeaderElectorModule } from 'leaderlease';
@Module({
imports: [
TypeOrmModule.forRoot({
type: 'postgres',
${CONNECTION}
autoLoadEntities: true,
}),
LeaderElectorModule.forRoot({
schema: 'schema_name',
}),
],
})
export class AppModule {}
`,
  // Quick Start, 2. Use in Services.
  'src/tasks.service.ts': `// tasks.service.ts
import { Injectable } from '@nestjs/common';
import { LeaderElectorService } from 'leaderlease';
@Injectable()
export class TasksService {
constructor(private readonly leaderElector: LeaderElectorService) {}
async performCriticalTask() {
if (this.leaderElector.amILeader()) {
// Logic executed only by the leader
console.log('Performing leader-only task');
}
}
}
`,
  // Configuration, Module Settings: the forRoot call in a module of its own.
  'src/settings.module.ts': `import { Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { LeaderElectorModule } from 'leaderlease';
@Module({
imports: [
TypeOrmModule.forRoot({ type: 'postgres', ${CONNECTION.replace(/\n/g, ' ')} autoLoadEntities: true }),
LeaderElectorModule.forRoot({
leaseDuration: 15000, // Lease duration in ms (default: 10000)
renewalInterval: 5000, // Renewal interval (default: 3000)
jitterRange: 2000, // Request timing variance (default: 2000)
lockId: 12345, // Lock identifier (default: 1)
createTableOnInit: false, // if you use migration
})
],
})
export class SettingsModule {}
`,
  // Configuration, Migration (exported so that a DataSource can list it).
  'src/migration.ts': `import { LeaderElectionMigrationBase } from "leaderlease";
class LeaderElectionMigration extends LeaderElectionMigrationBase {
schema = "leader_schema"; // default - 'public'
name = "leader_election_migration" + Date.now(); // your timestamp here
}
export { LeaderElectionMigration };
`,
  // Standalone Usage, with the connection filled in where the README says "// ... configuration".
  'src/standalone.ts': `import { DataSource } from 'typeorm';
import { LeaderElectorCore, LeaderLease } from 'leaderlease';
async function bootstrap() {
const dataSource = new DataSource({
type: 'postgres',
${CONNECTION}
entities: [LeaderLease],
});
await dataSource.initialize();
const elector = new LeaderElectorCore(
dataSource.getRepository(LeaderLease),
{
leaseDuration: 15000,
instanceId: 'my-app-01'
}
);
setInterval(() => {
if (elector.amILeader()) {
console.log('Performing leader task');
}
}, 1000);
}
bootstrap();
`,
  // Standalone Usage exactly as written: `// ... configuration` left in, so the DataSource has no
  // connection values and node-postgres takes them from the environment (PGHOST, PGPORT, PGDATABASE) and
  // its defaults (the user is the login name, $USER, when PGUSER is unset).
  'src/standalone-as-written.ts': `import { DataSource } from 'typeorm';
import { LeaderElectorCore, LeaderLease } from 'leaderlease';
async function bootstrap() {
const dataSource = new DataSource({
type: 'postgres',
// ... configuration
entities: [LeaderLease],
});
await dataSource.initialize();
const elector = new LeaderElectorCore(
dataSource.getRepository(LeaderLease),
{
leaseDuration: 15000,
instanceId: 'my-app-01'
}
);
setInterval(() => {
if (elector.amILeader()) {
console.log('Performing leader task');
}
}, 1000);
}
bootstrap();
`,
  // The runners (not from the README): start an app of the blocks, report what happened, and close.
  'src/run-quickstart.ts': `import 'reflect-metadata';
import { Module } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { LeaderElectorService } from 'leaderlease';
import { AppModule } from './app.module';
import { TasksService } from './tasks.service';
@Module({ imports: [AppModule], providers: [TasksService] })
class Main {}
async function main() {
  const app = await NestFactory.createApplicationContext(Main, { logger: ['error', 'warn'] });
  const elector = app.get(LeaderElectorService);
  const deadline = Date.now() + 20000;
  while (!elector.amILeader() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  await app.get(TasksService).performCriticalTask();
  await app.close();
}
declare const process: { exit(code: number): never };
main().catch((e) => { console.error(e); process.exit(1); });
`,
  'src/run-migration.ts': `import 'reflect-metadata';
import { NestFactory } from '@nestjs/core';
import { DataSource } from 'typeorm';
import { LeaderElectorService, LeaderElectionMigrationBase } from 'leaderlease';
import { LeaderElectionMigration } from './migration';
import { SettingsModule } from './settings.module';
// The settings block runs with createTableOnInit: false in schema public: its table comes from the base
// class with its default schema, as a user who migrates the default schema writes it.
class PublicMigration extends LeaderElectionMigrationBase {
name = 'public_leader_election_migration' + Date.now();
}
async function main() {
  const ds = new DataSource({ type: 'postgres', ${CONNECTION.replace(/\n/g, ' ')} migrations: [LeaderElectionMigration, PublicMigration] });
  await ds.initialize();
  const ran = await ds.runMigrations();
  const tables = await ds.query("SELECT table_schema FROM information_schema.tables WHERE table_name = 'leader_lease' AND table_schema IN ('leader_schema', 'public') ORDER BY 1");
  console.log(JSON.stringify({ ran: ran.length, tables: tables.map((t: { table_schema: string }) => t.table_schema) }));
  const app = await NestFactory.createApplicationContext(SettingsModule, { logger: ['error', 'warn'] });
  const elector = app.get(LeaderElectorService);
  const deadline = Date.now() + 20000;
  while (!elector.amILeader() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const row = await ds.query('SELECT leader_id FROM public.leader_lease WHERE id = 12345');
  console.log(JSON.stringify({ settingsLeader: elector.amILeader(), row: row.length }));
  await app.close();
  await ds.undoLastMigration();
  await ds.undoLastMigration();
  const left = await ds.query("SELECT 1 FROM information_schema.tables WHERE table_name = 'leader_lease' AND table_schema IN ('leader_schema', 'public')");
  console.log(JSON.stringify({ leftAfterDown: left.length }));
  await ds.destroy();
}
declare const process: { exit(code: number): never };
main().catch((e) => { console.error(e); process.exit(1); });
`,
  'tsconfig.json': JSON.stringify(
    {
      compilerOptions: {
        module: 'commonjs',
        target: 'ES2023',
        declaration: true,
        removeComments: true,
        emitDecoratorMetadata: true,
        experimentalDecorators: true,
        allowSyntheticDefaultImports: true,
        sourceMap: true,
        outDir: './dist',
        rootDir: './src',
        incremental: true,
        skipLibCheck: true,
        strictNullChecks: true,
        forceConsistentCasingInFileNames: true,
        noImplicitAny: false,
        strictBindCallApply: false,
        noFallthroughCasesInSwitch: false,
      },
      include: ['src'],
    },
    null,
    2,
  ),
};

describe("nest-leader-election 1.1.2's README, run against the packed package", () => {
  let packed: Packed;
  let app: { dir: string; close(): void };
  before(async () => {
    const admin = new Client({ connectionString: DATABASE_URL });
    await admin.connect();
    await admin.query(`CREATE DATABASE ${db}`);
    await admin.query(`CREATE DATABASE ${db}_w`);
    await admin.end();
    packed = await pack();
    // The README's install line, with the package name changed.
    app = await installApp(packed, ['@nestjs/core', '@nestjs/typeorm', 'typeorm', 'pg', 'reflect-metadata']);
    for (const [file, text] of Object.entries(FILES)) {
      mkdirSync(join(app.dir, file, '..'), { recursive: true });
      writeFileSync(join(app.dir, file), text);
    }
  });
  after(async () => {
    app?.close();
    packed?.close();
    const admin = new Client({ connectionString: DATABASE_URL });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
    await admin.query(`DROP DATABASE IF EXISTS ${db}_w WITH (FORCE)`);
    await admin.end();
  });

  test('every block compiles in a Nest-style project (tsc, CommonJS, decorator metadata)', async () => {
    const tsc = join(REPO, 'node_modules', '.bin', 'tsc');
    const r = await run(tsc, ['-p', 'tsconfig.json'], app.dir, packed.env, 180_000);
    assert.equal(r.code, 0, describeRun('tsc', r));
  });

  test('Quick Start: the module and the service; the leader runs the leader-only task', async () => {
    const r = await run(process.execPath, ['dist/run-quickstart.js'], app.dir, packed.env, 60_000);
    assert.equal(r.code, 0, describeRun('run-quickstart', r));
    assert.match(r.stdout, /Performing leader-only task/, describeRun('run-quickstart', r));
  });

  test('Migration block and the settings block (createTableOnInit: false): migrated, elected, migrated down', async () => {
    const r = await run(process.execPath, ['dist/run-migration.js'], app.dir, packed.env, 90_000);
    assert.equal(r.code, 0, describeRun('run-migration', r));
    const lines = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(lines[0], { ran: 2, tables: ['leader_schema', 'public'] }, describeRun('run-migration', r));
    assert.deepEqual(lines[1], { settingsLeader: true, row: 1 }, describeRun('run-migration', r));
    assert.deepEqual(lines[2], { leftAfterDown: 0 }, describeRun('run-migration', r));
  });

  test('Standalone Usage: the elector of a repository leads and the interval logs the leader task', async () => {
    // The block runs until stopped: wait for its first leader line, then stop it.
    const r = await run(process.execPath, ['dist/standalone.js'], app.dir, packed.env, 12_000);
    assert.match(r.stdout, /Performing leader task/, describeRun('standalone', r));
    assert.doesNotMatch(r.stderr, /Error|Unhandled/i, describeRun('standalone', r));
  });

  test('Standalone Usage as written (no connection values): the elector connects as node-postgres does', async () => {
    // A user whose login name is the database role and whose PG* variables name the server and database:
    // TypeORM (node-postgres) connects as $USER; the elector must use the same role, not a default of its
    // own. In a second database of this test's (the other standalone block holds lock 1 there until its
    // lease ends).
    const env: NodeJS.ProcessEnv = { ...packed.env, PGHOST: conn.host, PGPORT: String(conn.port), PGDATABASE: `${db}_w`, USER: conn.username };
    delete env['PGUSER'];
    if (base.password) env['PGPASSWORD'] = conn.password;
    else delete env['PGPASSWORD'];
    const r = await run(process.execPath, ['dist/standalone-as-written.js'], app.dir, env, 12_000);
    assert.match(r.stdout, /Performing leader task/, describeRun('standalone as written', r));
    assert.doesNotMatch(r.stderr, /Error|Unhandled|does not exist/i, describeRun('standalone as written', r));
  });
});
