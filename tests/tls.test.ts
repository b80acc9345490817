import 'reflect-metadata';

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { DataSource } from 'typeorm';

import {
  DatabaseUnreachableError,
  LeaderElectionConfigError,
  LeaderElectorCore,
  connectionSettingsFromDataSource,
} from '../dist/core.js';
import { FAST, waitFor } from './helpers.js';
import { throwawayPg } from './servers.js';

/**
 * TLS from a TypeORM DataSource's settings and from `connect(url, { ssl })`, on a throwaway PostgreSQL
 * with ssl = on and a CA and server certificate (DNS:localhost) made by openssl (throwaway-pg.sh --tls).
 */
describe('TLS from DataSource settings', () => {
  let pg: ReturnType<typeof throwawayPg>;
  let ca = '';
  before(() => {
    pg = throwawayPg(['--tls']);
    ca = pg.tlsFile('ca.pem');
  });
  after(() => pg?.destroy());

  const base = () => ({ type: 'postgres' as const, host: 'localhost', port: pg.port, username: 'postgres', database: 'postgres' });

  async function leads(elector: LeaderElectorCore): Promise<void> {
    try {
      assert.ok(await waitFor(() => elector.amILeader(), 5000), 'leads over TLS');
    } finally {
      await elector.shutdown();
    }
  }

  test('a DataSource with ssl.ca connects and leads', async () => {
    const ds = new DataSource({ ...base(), ssl: { ca } });
    await leads(await LeaderElectorCore.create(ds, { ...FAST, schema: 'll_tls_ds' }));
  });

  test('replication.master with ssl.ca (and Buffers) is used, not localhost:5432', async () => {
    const ds = new DataSource({
      type: 'postgres',
      replication: {
        master: { host: 'localhost', port: pg.port, username: 'postgres', database: 'postgres', ssl: { ca: [Buffer.from(ca)] } },
        slaves: [{ host: '192.0.2.1', port: 1 }],
      },
    });
    const settings = await connectionSettingsFromDataSource(ds);
    assert.equal(settings.port, pg.port);
    assert.equal(settings.ssl?.mode, 'verify-full');
    await leads(await LeaderElectorCore.create(ds, { ...FAST, schema: 'll_tls_repl' }));
  });

  test('connect(url, { ssl }) standalone; rejectUnauthorized: false encrypts without verifying', async () => {
    await leads(await LeaderElectorCore.connect(`postgres://postgres@localhost:${pg.port}/postgres`, { ...FAST, schema: 'll_tls_url', ssl: { ca } }));
    await leads(
      await LeaderElectorCore.connect(`postgres://postgres@127.0.0.1:${pg.port}/postgres`, {
        ...FAST,
        schema: 'll_tls_noverify',
        ssl: { rejectUnauthorized: false },
      }),
    );
  });

  test('the wrong CA is a clear TLS error naming the host', async () => {
    const ds = new DataSource({ ...base(), ssl: { ca: pg.tlsFile('other-ca.pem') } });
    await assert.rejects(LeaderElectorCore.create(ds, { ...FAST, schema: 'll_tls_wrong' }), (err: Error) => {
      assert.ok(err instanceof DatabaseUnreachableError, `${err.name}: ${err.message}`);
      assert.match(err.message, new RegExp(`TLS with localhost:${pg.port} failed`));
      assert.match(err.message, /not signed by a trusted CA/);
      return true;
    });
    // ssl: true checks against the public roots: the test CA is not one of them.
    await assert.rejects(LeaderElectorCore.create(new DataSource({ ...base(), ssl: true }), FAST), DatabaseUnreachableError);
  });

  test('bad ssl settings are typed errors naming the field', async () => {
    const cases: [unknown, RegExp][] = [
      [{ ca: '/etc/ssl/ca.pem' }, /`ssl.ca` must be PEM text/],
      [{ ca, passphrase: 'x' }, /`ssl.passphrase`/],
      [{ cert: ca }, /`ssl.cert` and `ssl.key` must be given together/],
      [{ ca: 5 }, /`ssl.ca` must be PEM text/],
      ['yes', /`ssl` must be a boolean or an object/],
    ];
    for (const [ssl, message] of cases) {
      const ds = new DataSource({ ...base(), ssl: ssl as never });
      await assert.rejects(LeaderElectorCore.create(ds, FAST), (err: Error) => {
        assert.ok(err instanceof LeaderElectionConfigError, `${JSON.stringify(ssl)}: ${err.name}: ${err.message}`);
        assert.match(err.message, message);
        return true;
      });
    }
    await assert.rejects(
      LeaderElectorCore.connect(pg.url, { ...FAST, pooler: 'bouncy' as never }),
      /`pooler` must be 'none', 'session' or 'transaction'/,
    );
  });
});
