import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

import { connect } from 'nats';

import { DATABASE_URL, dropSchema, randomSchema, runScript } from './helpers.js';

const DIST = join(__dirname, '..', 'dist', 'index.js');
const NATS_URL = process.env['NATS_URL'] ?? 'nats://127.0.0.1:4222';
/** No election is awaited here: timings with room for a loaded machine (operation timeout 750 ms). */
const TIMINGS = { leaseDuration: 4000, renewalInterval: 1500, jitterRange: 200 };

interface Seen {
  code?: string;
  message: string;
}

describe('unknown configuration keys', () => {
  const schema = randomSchema();
  const buckets = [1, 2].map(() => `ll_opts_${randomBytes(5).toString('hex')}`);
  after(async () => {
    await dropSchema(schema);
    const nc = await connect({ servers: NATS_URL });
    const jsm = await nc.jetstreamManager();
    for (const b of buckets) await jsm.streams.delete(`KV_${b}`).catch(() => undefined);
    await nc.close();
  });

  test('each misspelt key warns once per process, naming the closest valid key; valid configs warn nothing', async () => {
    // A fresh process: the warnings are once per process.
    const script = `
      const { LeaderElectorCore, LeaderElectorModule } = require(${JSON.stringify(DIST)});
      const { Test } = require('@nestjs/testing');
      const url = ${JSON.stringify(DATABASE_URL)};
      const servers = ${JSON.stringify(NATS_URL)};
      const [bucket1, bucket2] = ${JSON.stringify(buckets)};
      const timings = ${JSON.stringify(TIMINGS)};
      const base = { ...timings, schema: ${JSON.stringify(schema)} };
      const seen = [];
      process.on('warning', (w) => seen.push({ code: w.code, message: w.message }));
      const settle = () => new Promise((r) => setTimeout(r, 20));
      const compileAndClose = async (imports) => (await Test.createTestingModule({ imports }).compile()).close();
      (async () => {
        // Every valid key of every entry point.
        const all = { ...base, baseCleanInterval: 20000, lockId: 1, instanceId: 'valid', createTableOnInit: true,
          safetyMargin: 400, operationTimeout: 750, maxEventLoopStall: 0 };
        await (await LeaderElectorCore.connect(url, all)).shutdown();
        const { schema: _s, ...natsBase } = all;
        await (await LeaderElectorCore.connectNats(servers, { ...natsBase, bucket: bucket1 })).shutdown();
        const viaSource = new LeaderElectorCore({ nats: { servers, bucket: bucket1 } }, natsBase);
        await viaSource.ready();
        await viaSource.shutdown();
        await compileAndClose([LeaderElectorModule.forRoot({ ...all, connectionString: url })]);
        await compileAndClose([LeaderElectorModule.forRootAsync({
          imports: [], inject: [], dataSourceName: undefined,
          useFactory: () => ({ ...all, connectionString: url }),
        })]);
        await settle();
        const valid = seen.splice(0);

        // The same misspelling twice in the standalone config, then again in connectNats' config.
        await (await LeaderElectorCore.connect(url, { ...base, lockId: 2, leaseDurtion: 5000 })).shutdown();
        await (await LeaderElectorCore.connect(url, { ...base, lockId: 3, leaseDurtion: 5000 })).shutdown();
        await (await LeaderElectorCore.connectNats(servers, { ...timings, bucket: bucket2, leaseDurtion: 5000, instanceID: 'x' })).shutdown();
        await compileAndClose([LeaderElectorModule.forRoot({ ...timings, backend: { nats: { servers, bucket: bucket2, sever: 'y' } } })]);
        await compileAndClose([LeaderElectorModule.forRoot({ connectionString: url, ...base, lockid: 4 })]);
        await compileAndClose([LeaderElectorModule.forRootAsync({
          injct: [], useFactory: () => ({ connectionString: url, ...base, shema: 'x', fooBarBazQux: 1 }),
        })]);
        await settle();
        process.stdout.write(JSON.stringify({ valid, misspelt: seen }));
      })().catch((e) => { console.error(e); process.exit(1); });
    `;
    const out = (await runScript(script)) as { valid: Seen[]; misspelt: Seen[] };
    assert.deepEqual(out.valid, [], 'valid configs give no warning');
    const expected: [string, RegExp][] = [
      ['leaseDurtion', /in the leader election config.*did you mean `leaseDuration`\?/],
      ['instanceID', /in the connectNats config.*did you mean `instanceId`\?/],
      ['backend.nats.sever', /did you mean `backend\.nats\.servers`\?/],
      ['lockid', /in the LeaderElectorModule options.*did you mean `lockId`\?/],
      ['injct', /in the LeaderElectorModule\.forRootAsync options.*did you mean `inject`\?/],
      ['shema', /in the LeaderElectorModule options.*did you mean `schema`\?/],
      ['fooBarBazQux', /valid: .*leaseDuration.*maxEventLoopStall/],
    ];
    assert.deepEqual(
      out.misspelt.map((w) => w.code),
      expected.map(() => 'LEADERLEASE_UNKNOWN_OPTION'),
      JSON.stringify(out.misspelt, null, 1),
    );
    for (const [i, [key, rule]] of expected.entries()) {
      const message = out.misspelt[i]!.message;
      assert.ok(message.includes(`unknown option \`${key}\``), message);
      assert.match(message, rule);
    }
  });
});
