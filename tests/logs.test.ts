// The core's events reach JavaScript: in a NestJS app through Nest's Logger (context `LeaderElector`),
// standalone through the `logger` option and the `'log'` event, one line per event with lock id, instance
// id, term and reason; and nothing is printed by default.
import 'reflect-metadata';

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

import { type LoggerService, Module } from '@nestjs/common';
import { Test } from '@nestjs/testing';

import {
  LeaderElectionConfigError,
  LeaderElectorCore,
  LeaderElectorModule,
  LeaderElectorService,
  type LeaderElectionLogEvent,
} from '../dist/index.js';
import { DATABASE_URL, FAST, dropSchema, proxyToDatabase, randomSchema, sleep, waitFor } from './helpers.js';

const schemas: string[] = [];
after(async () => {
  for (const s of schemas) await dropSchema(s);
});
function schema(): string {
  const s = randomSchema();
  schemas.push(s);
  return s;
}

interface Line {
  level: string;
  message: string;
  context: string | undefined;
}

/** A Nest LoggerService that keeps every line. */
class CapturingLogger implements LoggerService {
  readonly lines: Line[] = [];
  #push(level: string, message: unknown, context: unknown): void {
    this.lines.push({ level, message: String(message), context: typeof context === 'string' ? context : undefined });
  }
  log(message: unknown, context?: unknown): void {
    this.#push('log', message, context);
  }
  warn(message: unknown, context?: unknown): void {
    this.#push('warn', message, context);
  }
  error(message: unknown, context?: unknown): void {
    this.#push('error', message, context);
  }
  debug(message: unknown, context?: unknown): void {
    this.#push('debug', message, context);
  }
  verbose(message: unknown, context?: unknown): void {
    this.#push('verbose', message, context);
  }
}

describe('logs in a NestJS app', () => {
  test('a renewal failure gives one warn line with its reason on the LeaderElector context', async () => {
    const proxy = await proxyToDatabase();
    const s = schema();
    @Module({
      imports: [
        LeaderElectorModule.forRoot({ connectionString: proxy.urlFor(DATABASE_URL), schema: s, lockId: 31, ...FAST }),
      ],
    })
    class AppModule {}
    const logger = new CapturingLogger();
    const moduleRef = await Test.createTestingModule({ imports: [AppModule] }).compile();
    const app = moduleRef.createNestApplication({ logger });
    await app.init();
    const elector = app.get(LeaderElectorService);
    const events: LeaderElectionLogEvent[] = [];
    elector.on('log', (e) => events.push(e));
    try {
      assert.ok(await waitFor(() => elector.amILeader(), 5000), 'never elected');
      const term = elector.term()!;
      const id = elector.instanceId!;
      const ours = () => logger.lines.filter((l) => l.context === 'LeaderElector');
      const elected = ours().filter((l) => l.message.startsWith('elected leader'));
      assert.equal(elected.length, 1, JSON.stringify(ours()));
      assert.equal(elected[0]!.level, 'log');
      assert.match(elected[0]!.message, new RegExp(`lock 31, instance ${id}, term ${term}`));

      // Debug lines (renewals) reach the app's logger, which allows every level.
      assert.ok(
        await waitFor(() => ours().some((l) => l.level === 'debug' && l.message.startsWith('lease renewed')), 3000),
        JSON.stringify(ours()),
      );

      proxy.cut();
      assert.ok(
        await waitFor(() => ours().some((l) => l.message.startsWith('renewal failed')), 3000),
        `no renewal failure logged: ${JSON.stringify(ours())}`,
      );
      assert.ok(await waitFor(() => !elector.amILeader(), 3000), 'still leading');
      assert.ok(await waitFor(() => ours().some((l) => l.message.startsWith('stepped down')), 2000));
      const failures = ours().filter((l) => l.message.startsWith('renewal failed'));
      const failureEvents = events.filter((e) => e.kind === 'renewal_failed');
      // One line per event: as many warn lines as renewal failures reported, each a single line.
      assert.equal(failures.length, failureEvents.length, JSON.stringify({ failures, failureEvents }));
      const first = failures[0]!;
      assert.equal(first.level, 'warn');
      assert.ok(!first.message.includes('\n'));
      assert.match(first.message, new RegExp(`^renewal failed; retrying \\(lock 31, instance ${id}, term ${term}, reason: \\S.*`));
      assert.equal(failureEvents[0]!.term, term);
      assert.equal(failureEvents[0]!.operation, 'renew');
      assert.ok(failureEvents[0]!.reason, 'no reason');
      assert.ok(first.message.includes(failureEvents[0]!.reason!.replace(/\s*[\r\n]+\s*/g, ' ')));
      const down = ours().find((l) => l.message.startsWith('stepped down'))!;
      assert.equal(down.level, 'warn');
      assert.match(down.message, new RegExp(`term ${term}, reason: local lease deadline passed`));
    } finally {
      proxy.heal();
      await app.close();
      await proxy.close();
    }
  });

  test("debug lines only when the app's logger level allows them", async () => {
    const s = schema();
    @Module({ imports: [LeaderElectorModule.forRoot({ connectionString: DATABASE_URL, schema: s, lockId: 32, ...FAST })] })
    class AppModule {}
    const logger = new CapturingLogger();
    const moduleRef = await Test.createTestingModule({ imports: [AppModule] }).compile();
    const app = moduleRef.createNestApplication({ logger });
    app.useLogger(['log', 'warn', 'error']);
    app.useLogger(logger);
    await app.init();
    const elector = app.get(LeaderElectorService);
    try {
      assert.ok(await waitFor(() => elector.amILeader(), 5000));
      await sleep(1200); // a few renewals
      const ours = logger.lines.filter((l) => l.context === 'LeaderElector');
      assert.ok(ours.some((l) => l.message.startsWith('elected leader')), JSON.stringify(ours));
      assert.deepEqual(
        ours.filter((l) => l.level === 'debug'),
        [],
      );
    } finally {
      await app.close();
    }
  });
});

describe('logs standalone', () => {
  test("the logger option and the 'log' event: one line per event, lock id, instance id, term, reason", async () => {
    const s = schema();
    const lines: { level: string; line: string }[] = [];
    const logger = {
      log: (line: string) => lines.push({ level: 'log', line }),
      warn: (line: string) => lines.push({ level: 'warn', line }),
      error: (line: string) => lines.push({ level: 'error', line }),
    };
    const a = await LeaderElectorCore.connect(DATABASE_URL, { schema: s, lockId: 33, instanceId: 'twin', logger, ...FAST });
    const events: LeaderElectionLogEvent[] = [];
    let b: LeaderElectorCore | undefined;
    try {
      assert.ok(await waitFor(() => a.amILeader(), 5000));
      // The same instance id twice: the second one warns and waits.
      b = new LeaderElectorCore(DATABASE_URL, { schema: s, lockId: 33, instanceId: 'twin', ...FAST });
      b.on('log', (e) => events.push(e));
      await b.ready();
      assert.ok(await waitFor(() => events.some((e) => e.kind === 'duplicate_instance_id'), 3000), JSON.stringify(events));
      const dup = events.find((e) => e.kind === 'duplicate_instance_id')!;
      assert.equal(dup.level, 'warn');
      assert.equal(dup.lockId, 33);
      assert.equal(dup.instanceId, 'twin');
      assert.equal(dup.term, a.term());
      assert.match(dup.line, /^a lease in this node's instance id is held by another process.* \(lock 33, instance twin, term \d+\)$/);
      // A 'log' listener gets the debug events too: renewals of b? b does not lead; a's logger has no
      // debug method, so none of a's renewals reach it.
      assert.ok(!lines.some((l) => l.line.startsWith('lease renewed')));
      const elected = lines.filter((l) => l.line.startsWith('elected leader'));
      assert.equal(elected.length, 1);
      assert.equal(elected[0]!.level, 'log');
      assert.match(elected[0]!.line, new RegExp(`^elected leader \\(lock 33, instance twin, term ${a.term()}\\)$`));
      await a.release();
      assert.ok(await waitFor(() => lines.some((l) => l.line.startsWith('stepped down')), 2000));
      const down = lines.find((l) => l.line.startsWith('stepped down'))!;
      assert.equal(down.level, 'log'); // a release is info, not a warning
      assert.match(down.line, /reason: released/);
    } finally {
      await b?.shutdown();
      await a.shutdown();
    }
  });

  test('a logger with debug gets the renewals, with their latency', async () => {
    const s = schema();
    const debug: string[] = [];
    const noop = () => undefined;
    const e = await LeaderElectorCore.connect(DATABASE_URL, {
      schema: s,
      lockId: 34,
      ...FAST,
      logger: { log: noop, warn: noop, error: noop, debug: (l: string) => debug.push(l) },
    });
    try {
      assert.ok(await waitFor(() => debug.some((l) => l.startsWith('lease renewed')), 4000), JSON.stringify(debug));
      assert.match(debug.find((l) => l.startsWith('lease renewed'))!, /^lease renewed \(lock 34, instance \S+, term \d+, took \d+ ms\)$/);
    } finally {
      await e.shutdown();
    }
  });

  test('a logger that is not one is a typed error naming the option', async () => {
    await assert.rejects(
      LeaderElectorCore.connect(DATABASE_URL, { schema: schema(), logger: { log: console.log } as never }),
      (err: unknown) => err instanceof LeaderElectionConfigError && /`logger` must have a `warn` method/.test(err.message),
    );
  });

  test('nothing is printed by default, and the process exits after shutdown', async () => {
    const s = schema();
    const dist = join(__dirname, '..', 'dist', 'core.js');
    // A standalone elector through a proxy that is cut (renewal failures, step-down, LISTEN lost), with
    // no logger and no listener: the process prints only its own result and exits on its own.
    const script = `
      const net = require('node:net');
      const { LeaderElectorCore } = require(${JSON.stringify(dist)});
      const target = new URL(${JSON.stringify(DATABASE_URL)});
      const sockets = new Set();
      let cut = false;
      const reset = (s) => (s.writableEnded ? s.destroy() : s.resetAndDestroy()); // see resetSocket in helpers
      const server = net.createServer((c) => {
        if (cut) return reset(c);
        const u = net.connect(Number(target.port || 5432), target.hostname);
        for (const s of [c, u]) { sockets.add(s); s.on('error', () => {}); s.on('close', () => sockets.delete(s)); }
        c.pipe(u); u.pipe(c);
      });
      server.listen(0, '127.0.0.1', async () => {
        const url = new URL(target); url.hostname = '127.0.0.1'; url.port = String(server.address().port);
        const e = await LeaderElectorCore.connect(url.toString(), { schema: ${JSON.stringify(s)}, lockId: 35, leaseDuration: 1500, renewalInterval: 400, jitterRange: 200 });
        const wait = (ms) => new Promise((r) => setTimeout(r, ms));
        for (let i = 0; i < 100 && !e.amILeader(); i++) await wait(50);
        const led = e.amILeader();
        cut = true; for (const s of sockets) reset(s);
        await wait(2500);
        cut = false;
        await e.shutdown();
        server.close();
        process.stdout.write(JSON.stringify({ led }));
      });
    `;
    const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    clearTimeout(timer);
    assert.equal(code, 0, `exit ${code}: ${err}`);
    assert.equal(err, '');
    assert.deepEqual(JSON.parse(out), { led: true });
  });
});
