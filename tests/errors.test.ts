import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';

import {
  DatabaseError,
  DatabaseUnreachableError,
  ElectorShutDownError,
  LeaderElectionConfigError,
  LeaderElectionError,
  LeaderElectionTimeoutError,
  LeaderElectorCore,
  PermissionDeniedError,
  TableMissingError,
  fromNative,
  upSql,
  type LeaderElectorConfig,
} from '../dist/index.js';
import { DATABASE_URL, FAST, closedPort, dropSchema, randomSchema, withClient } from './helpers.js';

/** Asserts that `p` rejects with `Ctor` and `code`, and returns the error. */
async function rejectsWith<E extends LeaderElectionError>(
  p: Promise<unknown>,
  Ctor: new (...args: never[]) => E,
  code: string,
): Promise<E> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof Ctor, `expected ${Ctor.name}, got ${String(err)}`);
    assert.ok(err instanceof LeaderElectionError);
    assert.ok(err instanceof Error);
    assert.equal(err.code, code);
    assert.equal(err.name, Ctor.name);
    return err;
  }
  assert.fail(`expected a rejection with ${Ctor.name}`);
}

describe('configuration errors', () => {
  const cases: Array<[string, LeaderElectorConfig, string]> = [
    ['negative leaseDuration', { leaseDuration: -1 }, 'leaseDuration'],
    ['zero leaseDuration', { leaseDuration: 0 }, 'leaseDuration'],
    ['NaN renewalInterval', { renewalInterval: Number.NaN }, 'renewalInterval'],
    ['infinite jitterRange', { jitterRange: Number.POSITIVE_INFINITY }, 'jitterRange'],
    ['negative baseCleanInterval', { baseCleanInterval: -5 }, 'baseCleanInterval'],
    ['renewalInterval not below leaseDuration', { leaseDuration: 1000, renewalInterval: 1000 }, 'renewalInterval'],
    ['jitterRange not below renewalInterval', { jitterRange: 3000 }, 'jitterRange'],
    ['fractional lockId', { lockId: 1.5 }, 'lockId'],
    ['lockId beyond INT', { lockId: 2 ** 31 }, 'lockId'],
    ['empty schema', { schema: '' }, 'schema'],
    ['reserved schema', { schema: 'pg_mine' }, 'schema'],
    ['blank instanceId', { instanceId: '   ' }, 'instanceId'],
    ['leaseDuration as a string', { leaseDuration: '1000' as unknown as number }, 'leaseDuration'],
    ['createTableOnInit as a string', { createTableOnInit: 'yes' as unknown as boolean }, 'createTableOnInit'],
    ['failoverQuarantine as a string', { failoverQuarantine: 'no' as unknown as boolean }, 'failoverQuarantine'],
  ];
  for (const [name, config, field] of cases) {
    test(`${name} is a LeaderElectionConfigError naming ${field}`, async () => {
      const err = await rejectsWith(
        LeaderElectorCore.connect(DATABASE_URL, config),
        LeaderElectionConfigError,
        'ERR_INVALID_CONFIG',
      );
      assert.match(err.message, new RegExp('`' + field + '`'), err.message);
      assert.doesNotMatch(err.message, /^\[ERR_/, 'the code prefix is stripped from the message');
    });
  }

  test('the constructor never throws; ready() rejects and an error listener is told', async () => {
    const elector = new LeaderElectorCore(DATABASE_URL, { leaseDuration: -1 });
    const emitted = new Promise<Error>((r) => elector.once('error', r));
    await rejectsWith(elector.ready(), LeaderElectionConfigError, 'ERR_INVALID_CONFIG');
    assert.ok((await emitted) instanceof LeaderElectionConfigError);
    assert.equal(elector.amILeader(), false);
    await elector.shutdown(); // does not reject after a failed start
  });

  test('a failed start without any listener or ready() call leaves no unhandled rejection', async () => {
    let unhandled: unknown = null;
    const onUnhandled = (reason: unknown) => {
      unhandled = reason;
    };
    process.on('unhandledRejection', onUnhandled);
    try {
      const elector = new LeaderElectorCore(DATABASE_URL, { renewalInterval: -1 });
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(elector.amILeader(), false);
      assert.equal(unhandled, null);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });
});

describe('database errors', () => {
  test('a closed port rejects with DatabaseUnreachableError', async () => {
    const port = await closedPort();
    const started = Date.now();
    const err = await rejectsWith(
      LeaderElectorCore.connect(`postgres://postgres@127.0.0.1:${port}/test`, FAST),
      DatabaseUnreachableError,
      'ERR_DATABASE_UNREACHABLE',
    );
    assert.match(err.message, /refused/i);
    assert.ok(Date.now() - started < 10_000, 'reported within 10 s');
  });

  const schema = randomSchema();
  after(() => dropSchema(schema));

  test('createTableOnInit false without the table rejects with TableMissingError', async () => {
    const err = await rejectsWith(
      LeaderElectorCore.connect(DATABASE_URL, { ...FAST, schema, createTableOnInit: false }),
      TableMissingError,
      'ERR_TABLE_MISSING',
    );
    assert.match(err.message, /migration/);
  });
});

describe('privileges', () => {
  const schema = randomSchema();
  const role = `ll_user_${schema.slice(-10).toLowerCase()}`;
  after(async () => {
    await dropSchema(schema);
    await withClient((c) => c.query(`DROP ROLE IF EXISTS ${role}`));
  });

  test('a user without rights on the lease table gets PermissionDeniedError', async () => {
    await withClient(async (c) => {
      await c.query(upSql(schema));
      await c.query(`CREATE ROLE ${role} LOGIN`);
      await c.query(`GRANT USAGE ON SCHEMA "${schema}" TO ${role}`);
    });
    const u = new URL(DATABASE_URL);
    u.username = role;
    u.password = '';
    const err = await rejectsWith(
      LeaderElectorCore.connect(u.toString(), { ...FAST, schema, createTableOnInit: false }),
      PermissionDeniedError,
      'ERR_PERMISSION_DENIED',
    );
    assert.match(err.message, /leader_lease/);
  });
});

describe('error mapping', () => {
  const classes: Array<[string, new (message: string) => LeaderElectionError]> = [
    ['ERR_INVALID_CONFIG', LeaderElectionConfigError],
    ['ERR_DATABASE_UNREACHABLE', DatabaseUnreachableError],
    ['ERR_TABLE_MISSING', TableMissingError],
    ['ERR_PERMISSION_DENIED', PermissionDeniedError],
    ['ERR_TIMEOUT', LeaderElectionTimeoutError],
    ['ERR_DATABASE', DatabaseError],
    ['ERR_SHUT_DOWN', ElectorShutDownError],
  ];
  for (const [code, Ctor] of classes) {
    test(`${code} becomes ${Ctor.name}`, () => {
      const e = fromNative(new Error(`[${code}] something\nwith two lines`));
      assert.ok(e instanceof Ctor);
      assert.equal(e.code, code);
      assert.equal(e.message, 'something\nwith two lines');
    });
  }
  test('an unknown code is kept; an uncoded error becomes ERR_INTERNAL with its cause', () => {
    assert.equal(fromNative(new Error('[ERR_SOMETHING_NEW] x')).code, 'ERR_SOMETHING_NEW');
    const original = new TypeError('boom');
    const e = fromNative(original);
    assert.equal(e.code, 'ERR_INTERNAL');
    assert.equal(e.cause, original);
  });
});
