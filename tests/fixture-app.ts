// A fixture app (tests/fixtures/<name>.ts, built next to the compiled tests) in a process of its own. The
// fixtures print one JSON object per line: those come as values, tagged with `instance`; what else the
// process prints (stderr, and stdout lines that are not JSON: Nest's logger writes its warnings to
// stdout) is kept as text, for the report of a failing test.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

import { DATABASE_URL } from './helpers.js';

export interface FixtureApp {
  /** The name it was started with (LL_INSTANCE). */
  instance: string;
  child: ChildProcess;
  /** The JSON lines it printed, in order, each with `instance`. */
  lines: Record<string, any>[];
  /** Everything else it printed. */
  stderr: string;
  /** How it exited; null while it runs. */
  exit: { code: number | null; signal: NodeJS.Signals | null } | null;
  exited: Promise<void>;
}

/** Starts tests/fixtures/`name`.ts as `instance` with DATABASE_URL, LL_INSTANCE and `env` set. */
export function startFixture(name: string, instance: string, env: Record<string, string>): FixtureApp {
  const child = spawn(process.execPath, [join(__dirname, 'fixtures', `${name}.js`)], {
    env: { ...process.env, DATABASE_URL, LL_INSTANCE: instance, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const app: FixtureApp = { instance, child, lines: [], stderr: '', exit: null, exited: Promise.resolve() };
  let out = '';
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    let nl: number;
    while ((nl = out.indexOf('\n')) >= 0) {
      const line = out.slice(0, nl);
      out = out.slice(nl + 1);
      try {
        app.lines.push({ ...(JSON.parse(line) as object), instance });
      } catch {
        app.stderr += `${line}\n`;
      }
    }
  });
  child.stderr!.on('data', (d: Buffer) => (app.stderr += d.toString()));
  app.exited = new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      app.exit = { code, signal };
      resolve();
    }),
  );
  return app;
}

/** SIGKILLs those of `apps` that still run and waits until all have exited. */
export async function killAll(apps: FixtureApp[]): Promise<void> {
  for (const a of apps) if (a.exit === null) a.child.kill('SIGKILL');
  await Promise.all(apps.map((a) => a.exited));
}

/** The first line of `app` for which `match` holds, once printed; rejects if it exits (or `timeoutMs` passes) first. */
export async function lineOf(
  app: FixtureApp,
  match: (line: Record<string, any>) => boolean,
  timeoutMs = 60_000,
): Promise<Record<string, any>> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const line = app.lines.find(match);
    if (line !== undefined) return line;
    if (app.exit !== null || Date.now() > end) {
      const why = app.exit !== null ? `exited (${app.exit.code ?? app.exit.signal})` : `did not print it within ${timeoutMs} ms`;
      throw new Error(`${app.instance} ${why}: ${app.stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
