// The NestJS harness of the tests: apps booted as a test does (`Test.createTestingModule`, no logger),
// initialised or listening on 127.0.0.1, and closed after their suite even when their start failed; a GET
// on a listening app; and the error, if any, with which an app fails to start.
import type { AddressInfo } from 'node:net';
import { after } from 'node:test';

import type { INestApplication, ModuleMetadata } from '@nestjs/common';
import { Test } from '@nestjs/testing';

import { dropSchema } from './helpers.js';

type Imports = NonNullable<ModuleMetadata['imports']>;

/** The apps of one suite: call in a `describe`; after it, each app is closed, then `schema` (if given) dropped. */
export function nestApps(schema?: string): {
  /** The apps started and not closed yet (a test may close one itself and take it out). */
  apps: INestApplication[];
  /** Compiles a module of `imports`, then initialises it, or with `listen` listens on a free port of 127.0.0.1. */
  start(imports: Imports, options?: { listen?: boolean }): Promise<INestApplication>;
} {
  const apps: INestApplication[] = [];
  after(async () => {
    for (const app of apps) await app.close();
    if (schema !== undefined) await dropSchema(schema);
  });
  return {
    apps,
    async start(imports, options = {}) {
      const moduleRef = await Test.createTestingModule({ imports }).compile();
      const app = moduleRef.createNestApplication({ logger: false });
      apps.push(app);
      if (options.listen) await app.listen(0, '127.0.0.1');
      else await app.init();
      return app;
    },
  };
}

/** The error with which an app of `imports` fails to initialise, or null if it starts; the app is closed. */
export async function startError(imports: Imports): Promise<unknown> {
  const moduleRef = await Test.createTestingModule({ imports }).compile();
  const app = moduleRef.createNestApplication({ logger: false });
  try {
    await app.init();
    return null;
  } catch (err) {
    return err;
  } finally {
    await app.close();
  }
}

/** GET `path` of a listening app: the status and the JSON body. */
export async function getJson(app: INestApplication, path: string): Promise<{ status: number; body: any }> {
  const { port } = app.getHttpServer().address() as AddressInfo;
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  return { status: res.status, body: await res.json() };
}
