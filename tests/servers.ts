import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * Servers of a test's own (never the shared ones): scripts/throwaway-pg.sh and
 * scripts/throwaway-pgbouncer.sh, each on a free port in a directory under /tmp, removed by `destroy()`.
 */

const SCRIPTS = join(__dirname, '..', 'scripts');

function script(name: string, args: string[]): string {
  return execFileSync('bash', [join(SCRIPTS, name), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

export interface Throwaway {
  dir: string;
  port: number;
  url: string;
  destroy(): void;
}

/** A throwaway PostgreSQL (`--tls`: ssl = on with the test certificates in `dir/tls`). */
export function throwawayPg(args: string[] = []): Throwaway & { tlsFile(name: string): string } {
  const dir = script('throwaway-pg.sh', ['start', ...args]);
  const url = readFileSync(join(dir, 'url'), 'utf8').trim();
  return {
    dir,
    url,
    port: Number(new URL(url).port),
    tlsFile: (name: string) => readFileSync(join(dir, 'tls', name), 'utf8'),
    destroy: () => void script('throwaway-pg.sh', ['destroy', dir]),
  };
}

/** A throwaway PgBouncer in front of `pg`, in `mode`, with `poolSize` server connections. */
export function throwawayPgBouncer(pg: Throwaway, mode: 'transaction' | 'session', poolSize: number): Throwaway {
  const dir = script('throwaway-pgbouncer.sh', ['start', '--to', String(pg.port), '--mode', mode, '--pool-size', String(poolSize)]);
  const url = readFileSync(join(dir, 'url'), 'utf8').trim();
  return {
    dir,
    url,
    port: Number(new URL(url).port),
    destroy: () => void script('throwaway-pgbouncer.sh', ['destroy', dir]),
  };
}
