import 'reflect-metadata';

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { Controller, Get, Inject, Injectable, Module } from '@nestjs/common';
import { Test } from '@nestjs/testing';
import { TypeOrmModule } from '@nestjs/typeorm';

import {
  LeaderElectorModule,
  LeaderElectorService,
  LeaderGuard,
  LeaderOnly,
  NotLeaderError,
  type LeaderElectorModuleOptions,
  type LeaderElectorOptionsFactory,
} from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, randomSchema, sleep, waitFor } from './helpers.js';
import { getJson, nestApps } from './nest-app.js';

// `UseGuards` is applied through the decorator of @nestjs/common, as an app does.
import { UseGuards } from '@nestjs/common';

/** The parts of DATABASE_URL, for TypeORM's host/port/username/database form of the Quick Start. */
const db = new URL(DATABASE_URL);
const typeOrmSettings = {
  type: 'postgres' as const,
  host: db.hostname,
  port: Number(db.port || 5432),
  username: decodeURIComponent(db.username) || 'postgres',
  ...(db.password ? { password: decodeURIComponent(db.password) } : {}),
  database: db.pathname.slice(1) || 'postgres',
};

@Injectable()
class TasksService {
  runs = 0;
  constructor(readonly leaderElector: LeaderElectorService) {}

  @LeaderOnly()
  tick(): string {
    this.runs++;
    return 'ran';
  }

  @LeaderOnly({ onFollower: 'throw' })
  async strictTick(): Promise<string> {
    return 'ran';
  }
}

@Controller('jobs')
class JobsController {
  @Get('status')
  status(): { ok: true } {
    return { ok: true };
  }

  @Get('run')
  @UseGuards(LeaderGuard)
  run(): { ran: true } {
    return { ran: true };
  }
}

/** The module of the original README's Quick Start app (TypeOrmModule.forRoot + forRoot({ schema })). */
function quickStartModule(schema: string) {
  @Module({
    imports: [
      TypeOrmModule.forRoot({ ...typeOrmSettings, autoLoadEntities: true }),
      LeaderElectorModule.forRoot({ schema, lockId: 11, ...FAST }),
    ],
    controllers: [JobsController],
    providers: [TasksService],
  })
  class AppModule {}
  return AppModule;
}

describe('original README: Quick Start in NestJS apps', () => {
  const schema = randomSchema();
  const { apps, start } = nestApps(schema);

  test('exactly one of three apps leads; @LeaderOnly, LeaderGuard and release follow it', async () => {
    for (let i = 0; i < 3; i++) await start([quickStartModule(schema)], { listen: true });
    const electors = apps.map((a) => a.get(LeaderElectorService));
    const leading = () => electors.filter((e) => e.amILeader());
    assert.ok(await waitFor(() => leading().length === 1, 5000), 'one leader within 5 s');
    for (let i = 0; i < 20; i++) {
      assert.ok(leading().length <= 1, 'never two leaders');
      await sleep(50);
    }
    const leaderIndex = electors.findIndex((e) => e.amILeader());
    const leader = electors[leaderIndex]!;
    assert.ok(
      await waitFor(() => electors.every((e) => e.leader()?.leaderId === leader.instanceId), 3000),
      'followers know the leader',
    );

    // @LeaderOnly: runs on the leader, skipped on the followers (or throws, when asked to).
    const tasks = apps.map((a) => a.get(TasksService));
    const results = tasks.map((t) => t.tick());
    assert.deepEqual(
      tasks.map((t) => t.runs),
      electors.map((e) => (e === leader ? 1 : 0)),
    );
    assert.deepEqual(results, electors.map((e) => (e === leader ? 'ran' : undefined)));
    for (const [i, t] of tasks.entries()) {
      if (i === leaderIndex) {
        assert.equal(await t.strictTick(), 'ran');
      } else {
        await assert.rejects(t.strictTick(), (err) => {
          assert.ok(err instanceof NotLeaderError);
          assert.equal(err.code, 'ERR_NOT_LEADER');
          assert.equal(err.leaderId, leader.instanceId);
          return true;
        });
      }
    }

    // LeaderGuard over HTTP: 200 on the leader, 503 naming the leader elsewhere; unguarded routes answer.
    for (const [i, app] of apps.entries()) {
      assert.equal((await getJson(app, '/jobs/status')).status, 200);
      const res = await getJson(app, '/jobs/run');
      if (i === leaderIndex) {
        assert.deepEqual(res, { status: 200, body: { ran: true } });
      } else {
        assert.equal(res.status, 503);
        assert.equal(res.body.statusCode, 503);
        assert.equal(res.body.error, 'Service Unavailable');
        assert.equal(res.body.leaderId, leader.instanceId);
        assert.equal(res.body.term, leader.term());
        assert.match(res.body.message, /not the leader/);
      }
    }

    // release(): another app takes over, with a higher term.
    const firstTerm = leader.term()!;
    await leader.release();
    assert.equal(leader.amILeader(), false);
    assert.ok(await waitFor(() => leading().length === 1 && !leader.amILeader(), 3000), 'handover within 3 s');
    assert.ok(leading()[0]!.term()! > firstTerm);

    // Closing the leader's app hands over too, and stops its elector.
    const next = leading()[0]!;
    const nextApp = apps[electors.indexOf(next)]!;
    apps.splice(apps.indexOf(nextApp), 1);
    await nextApp.close();
    assert.equal(next.status().state, 'stopped');
    assert.equal(next.amILeader(), false);
    assert.ok(await waitFor(() => leading().length === 1, 3000), 'a remaining app leads within 3 s of the close');
  });
});

describe('LeaderElectorModule.forRootAsync', () => {
  const schema = randomSchema();
  const { apps, start } = nestApps(schema);

  const CONFIG = 'CONFIG';
  @Module({ providers: [{ provide: CONFIG, useValue: { url: DATABASE_URL, schema } }], exports: [CONFIG] })
  class ConfigModule {}

  @Injectable()
  class ElectionConfig implements LeaderElectorOptionsFactory {
    constructor(@Inject(CONFIG) private readonly config: { url: string; schema: string }) {}
    createLeaderElectorOptions(): LeaderElectorModuleOptions {
      return { connectionString: this.config.url, schema: this.config.schema, lockId: 21, ...FAST, instanceId: 'by-class' };
    }
  }

  test('useFactory with inject, and useClass, without TypeORM; one leads', async () => {
    await start([
      LeaderElectorModule.forRootAsync({
        imports: [ConfigModule],
        inject: [CONFIG],
        useFactory: async (config: { url: string; schema: string }) => ({
          connectionString: config.url,
          schema: config.schema,
          lockId: 21,
          instanceId: 'by-factory',
          ...FAST,
        }),
      }),
    ]);
    await start([LeaderElectorModule.forRootAsync({ imports: [ConfigModule], useClass: ElectionConfig })]);
    const electors = apps.map((a) => a.get(LeaderElectorService));
    assert.deepEqual(electors.map((e) => e.instanceId), ['by-factory', 'by-class']);
    assert.ok(await waitFor(() => electors.filter((e) => e.amILeader()).length === 1, 5000), 'one leads');
  });

  test('no connectionString and no TypeORM DataSource: the app fails to start with a clear error', async () => {
    const m = await Test.createTestingModule({
      imports: [LeaderElectorModule.forRootAsync({ useFactory: () => ({ schema }) })],
    })
      .compile()
      .then(
        () => assert.fail('compiled'),
        (err: unknown) => err,
      );
    assert.match(String(m), /connectionString.*TypeOrmModule/s);
  });
});

describe('LeaderElectorService lifecycle', () => {
  test('a compiled but never initialised app does not campaign; init starts it, close stops it', async () => {
    const schema = randomSchema();
    try {
      const m = await Test.createTestingModule({
        imports: [LeaderElectorModule.forRoot({ connectionString: DATABASE_URL, schema, ...FAST })],
      }).compile();
      const elector = m.get(LeaderElectorService);
      await sleep(300);
      assert.equal(elector.instanceId, null, 'not started before init');
      const app = m.createNestApplication({ logger: false });
      await app.init();
      assert.ok(await waitFor(() => elector.amILeader(), 5000));
      await app.close();
      assert.equal(elector.status().state, 'stopped');
    } finally {
      await dropSchema(schema);
    }
  });
});
