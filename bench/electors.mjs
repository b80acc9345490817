// Starts an election with each package's standalone API, the way its README shows.
//
// leaderlease: LeaderElectorCore.connect(url, config) from the repository's build (../dist).
// nest-leader-election 1.1.2 (this directory's node_modules): a TypeORM DataSource with its LeaderLease
// entity, `new LeaderElectorCore(dataSource.getRepository(LeaderLease), config)`, as its README's
// "Standalone Usage". That example never starts the election (its constructor does not); the package's
// own `LeaderElectorCore.create()` starts it with `initialize()`, and so does this file. The DataSource's
// `schema` puts the entity's table in the same schema as the package's raw SQL (`config.schema`).
//
// Both get the same config; each connection carries `application_name` = `app`, so that the statements
// of one candidate can be counted in the server's log.

export const PACKAGES = ['leaderlease', 'nest-leader-election'];

export async function makeElector(pkg, url, app, schema, config) {
  if (pkg === 'leaderlease') {
    const { LeaderElectorCore } = await import('../dist/index.js');
    return LeaderElectorCore.connect(withAppName(url, app), { ...config, schema });
  }
  if (pkg === 'nest-leader-election') {
    const { dataSource, LeaderElectorCore, LeaderLease } = await originalDataSource(url, app, schema);
    const elector = new LeaderElectorCore(dataSource.getRepository(LeaderLease), { ...config, schema });
    await elector.initialize();
    return elector;
  }
  throw new Error(`unknown package ${pkg}`);
}

/**
 * `n` elections (lock ids `firstLockId` .. `firstLockId + n - 1`) in this process, started `batch` at a
 * time (`onBatch(electors)` after each batch). The original's electors share one DataSource (one pool), as electors of one application would.
 */
export async function makeMany(pkg, url, app, schema, config, n, firstLockId, onBatch, batch = 25) {
  let start;
  if (pkg === 'leaderlease') {
    const { LeaderElectorCore } = await import('../dist/index.js');
    const u = withAppName(url, app);
    start = (i) => LeaderElectorCore.connect(u, { ...config, schema, lockId: firstLockId + i, instanceId: `${config.instanceId}-${i}` });
  } else {
    const { dataSource, LeaderElectorCore, LeaderLease } = await originalDataSource(url, app, schema);
    start = async (i) => {
      const cfg = { ...config, schema, lockId: firstLockId + i, instanceId: `${config.instanceId}-${i}` };
      const e = new LeaderElectorCore(dataSource.getRepository(LeaderLease), cfg);
      await e.initialize();
      return e;
    };
  }
  const electors = [];
  for (let i = 0; i < n; i += batch) {
    const part = [];
    for (let j = i; j < Math.min(n, i + batch); j++) part.push(start(j));
    electors.push(...(await Promise.all(part)));
    onBatch?.(electors);
  }
  return electors;
}

async function originalDataSource(url, app, schema) {
  await import('reflect-metadata');
  const { DataSource } = await import('typeorm');
  const { LeaderElectorCore, LeaderLease } = await import('nest-leader-election');
  const dataSource = new DataSource({
    type: 'postgres',
    url,
    schema,
    applicationName: app,
    entities: [LeaderLease],
    logging: false,
  });
  await dataSource.initialize();
  return { dataSource, LeaderElectorCore, LeaderLease };
}

function withAppName(url, app) {
  return `${url}${url.includes('?') ? '&' : '?'}application_name=${encodeURIComponent(app)}`;
}
