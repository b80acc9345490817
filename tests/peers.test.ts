// The peer dependency ranges package.json claims, tried: the packed package installed from the registry
// into a fresh app with the oldest NestJS and TypeORM it claims (Nest 10, TypeORM 0.3.17,
// reflect-metadata 0.1) and with Nest 11 (TypeORM 0.3, newest); tests/pack.test.ts covers Nest 12 with
// TypeORM 1. In each, a NestJS app with TypeOrmModule and LeaderElectorModule elects a leader against the
// machine's PostgreSQL, and a TypeORM migration with LeaderElectionMigrationBase runs up and down with the
// native addon made unloadable. npm installs come from ~/.npm when they are cached there.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { dropSchema, randomSchema } from './helpers.js';
import {
  MIGRATION_CJS,
  NEST_APP_CJS,
  NO_ADDON_HOOK,
  type Packed,
  installApp,
  installedVersion,
  ok,
  pack,
} from './packed-app.js';

const SETS: { name: string; deps: string[] }[] = [
  {
    name: 'NestJS 10, TypeORM 0.3.17, reflect-metadata 0.1',
    deps: [
      '@nestjs/common@^10',
      '@nestjs/core@^10',
      '@nestjs/typeorm@^10',
      'typeorm@0.3.17',
      'pg@^8',
      'reflect-metadata@^0.1.13',
      'rxjs@^7',
    ],
  },
  {
    name: 'NestJS 11, TypeORM 0.3',
    deps: [
      '@nestjs/common@^11',
      '@nestjs/core@^11',
      '@nestjs/typeorm@^11',
      'typeorm@^0.3',
      'pg@^8',
      'reflect-metadata@^0.2',
      'rxjs@^7',
    ],
  },
];

describe('peer dependency ranges', () => {
  let packed: Packed;
  before(async () => {
    packed = await pack();
  });
  after(() => packed?.close());

  for (const set of SETS) {
    test(set.name, async (t) => {
      const started = Date.now();
      const lap = (what: string) => t.diagnostic(`${what}: ${((Date.now() - started) / 1000).toFixed(1)} s`);
      const schema = randomSchema();
      const app = await installApp(packed, set.deps);
      try {
        const versions = ['@nestjs/core', '@nestjs/typeorm', 'typeorm', 'reflect-metadata']
          .map((n) => `${n} ${installedVersion(app.dir, n)}`)
          .join(', ');
        lap(`installed (${versions})`);
        const env = { ...packed.env, LL_SCHEMA: schema };

        writeFileSync(join(app.dir, 'app.cjs'), NEST_APP_CJS);
        const nest = await ok('node app.cjs', 'node', ['app.cjs'], app.dir, env, 60_000);
        assert.match(nest.stdout, /nest: leader, term [1-9]\d*\nnest: closed/, nest.stdout + nest.stderr);
        lap('NestJS app elected a leader');

        writeFileSync(join(app.dir, 'no-addon.cjs'), NO_ADDON_HOOK);
        writeFileSync(join(app.dir, 'migrate.cjs'), MIGRATION_CJS);
        const migrateSchema = randomSchema();
        try {
          const r = await ok(
            'node --require ./no-addon.cjs migrate.cjs',
            'node',
            ['--require', './no-addon.cjs', 'migrate.cjs'],
            app.dir,
            { ...env, LL_SCHEMA: migrateSchema },
            60_000,
          );
          assert.deepEqual(JSON.parse(r.stdout), { ran: 1, createdObjects: 2, leftObjects: 0, dlopenCalls: 0 });
        } finally {
          await dropSchema(migrateSchema);
        }
        lap('TypeORM migration without the addon');
      } finally {
        app.close();
        await dropSchema(schema);
      }
    });
  }
});
