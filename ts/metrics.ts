import type * as Prom from 'prom-client';

import { LeaderElectionConfigError } from './errors.js';
import type { LeaderElectionLogEvent } from './logging.js';
import { requirePeer } from './optional-deps.js';

/**
 * The Prometheus metrics of an elector (`prom-client`, an optional peer dependency), with the names of
 * client-go's leader election where it has one, and the same names as the Rust crate's `metrics`
 * feature. Every metric has the label `name`.
 */
export const METRIC_NAMES = {
  /** Gauge: 1 while this instance leads (`amILeader()` at scrape time), else 0. */
  masterStatus: 'leader_election_master_status',
  /** Counter: this instance's leadership changes, label `transition`: `elected` or `stepped_down`. */
  leadershipChanges: 'leader_election_leadership_changes_total',
  /** Counter: renewals, label `outcome`: `success`, `failure` (an error: retried) or `lost` (no row). */
  renewals: 'leader_election_renewals_total',
  /** Histogram: seconds from sending a renewal to its outcome, every outcome. */
  renewalDuration: 'leader_election_renewal_duration_seconds',
  /** Gauge: seconds left to the local lease deadline at scrape time (0 when not leading). */
  leaseRemaining: 'leader_election_lease_remaining_seconds',
  /** Counter: failed store operations, label `operation`: renew, acquire, read, release, cleanup. */
  storeErrors: 'leader_election_store_errors_total',
} as const;

/** The `metrics` option of an elector when it is an object. */
export interface LeaderElectionMetricsOptions {
  /** The registry to register on (default: prom-client's default registry, `register`). */
  registry?: Prom.Registry;
  /** The `name` label of this election (default: its lock id). */
  name?: string;
}

/** What the metrics read from an elector: `LeaderElectorCore` has all of it. */
export interface MetricsSource {
  amILeader(): boolean;
  leaseRemaining(): number | null;
  on(event: 'log', listener: (e: LeaderElectionLogEvent) => void): unknown;
  off(event: 'log', listener: (e: LeaderElectionLogEvent) => void): unknown;
}

interface Tracked {
  name: string;
  source: MetricsSource;
}

/** The metrics registered on one registry, shared by every elector of the process tracked on it. */
interface RegistryMetrics {
  tracked: Set<Tracked>;
  changes: Prom.Counter<'name' | 'transition'>;
  renewals: Prom.Counter<'name' | 'outcome'>;
  duration: Prom.Histogram<'name'>;
  storeErrors: Prom.Counter<'name' | 'operation'>;
}

const byRegistry = new WeakMap<Prom.Registry, RegistryMetrics>();

/** Renewals take milliseconds; a timeout takes up to the operation timeout (2 s at most by default). */
const DURATION_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

function metricsOn(prom: typeof Prom, registry: Prom.Registry): RegistryMetrics {
  const known = byRegistry.get(registry);
  if (known) return known;
  for (const name of Object.values(METRIC_NAMES)) {
    if (registry.getSingleMetric(name) !== undefined) {
      throw new LeaderElectionConfigError(
        `invalid leader election config: \`metrics\`: the registry already has a metric named ${name} ` +
          '(registered by another copy of leaderlease?): pass a registry of its own',
      );
    }
  }
  const tracked = new Set<Tracked>();
  const registers = [registry];
  /** Per name, the largest value among the electors of that name (two electors of one name: any leads). */
  const perName = (value: (t: Tracked) => number): Map<string, number> => {
    const out = new Map<string, number>();
    for (const t of tracked) out.set(t.name, Math.max(out.get(t.name) ?? 0, value(t)));
    return out;
  };
  new prom.Gauge({
    name: METRIC_NAMES.masterStatus,
    help: 'Whether this instance leads the election (1) or not (0), by its local lease deadline.',
    labelNames: ['name'],
    registers,
    collect() {
      this.reset();
      for (const [name, v] of perName((t) => (t.source.amILeader() ? 1 : 0))) this.set({ name }, v);
    },
  });
  new prom.Gauge({
    name: METRIC_NAMES.leaseRemaining,
    help: "Seconds left to this instance's local lease deadline (0 when not leading).",
    labelNames: ['name'],
    registers,
    collect() {
      this.reset();
      for (const [name, v] of perName((t) => (t.source.leaseRemaining() ?? 0) / 1000)) this.set({ name }, v);
    },
  });
  const metrics: RegistryMetrics = {
    tracked,
    changes: new prom.Counter({
      name: METRIC_NAMES.leadershipChanges,
      help: "Changes of this instance's leadership, by transition (elected, stepped_down).",
      labelNames: ['name', 'transition'],
      registers,
    }),
    renewals: new prom.Counter({
      name: METRIC_NAMES.renewals,
      help: 'Lease renewals by outcome: success, failure (an error; retried), lost (no row: expired or taken over).',
      labelNames: ['name', 'outcome'],
      registers,
    }),
    duration: new prom.Histogram({
      name: METRIC_NAMES.renewalDuration,
      help: 'Seconds from sending a lease renewal to its outcome.',
      labelNames: ['name'],
      buckets: DURATION_BUCKETS,
      registers,
    }),
    storeErrors: new prom.Counter({
      name: METRIC_NAMES.storeErrors,
      help: 'Failed store operations, by operation (renew, acquire, read, release, cleanup).',
      labelNames: ['name', 'operation'],
      registers,
    }),
  };
  byRegistry.set(registry, metrics);
  return metrics;
}

const OUTCOMES: Record<string, string> = { renewed: 'success', renewal_failed: 'failure', lease_lost: 'lost' };

/**
 * Registers the metrics of `source` (on `options.registry`, else prom-client's default registry) and
 * returns the function that removes it again. Throws a `MissingPeerDependencyError` without prom-client.
 */
export function trackMetrics(source: MetricsSource, options: LeaderElectionMetricsOptions, lockId: number): () => void {
  if (options === null || typeof options !== 'object') {
    throw new LeaderElectionConfigError(
      `invalid leader election config: \`metrics\` must be true or an object { registry?, name? } (got ${typeof options})`,
    );
  }
  if (options.name !== undefined && (typeof options.name !== 'string' || options.name === '')) {
    throw new LeaderElectionConfigError('invalid leader election config: `metrics.name` must be a non-empty string');
  }
  const prom = requirePeer<typeof Prom>('prom-client', 'the `metrics` option');
  const registry = options.registry ?? prom.register;
  if (typeof registry?.getSingleMetric !== 'function') {
    throw new LeaderElectionConfigError(
      'invalid leader election config: `metrics.registry` must be a prom-client Registry',
    );
  }
  const m = metricsOn(prom, registry);
  const name = options.name ?? String(lockId);
  const entry: Tracked = { name, source };
  m.tracked.add(entry);
  // Start every series at 0, so that a rate() sees the first increment.
  m.changes.inc({ name, transition: 'elected' }, 0);
  m.changes.inc({ name, transition: 'stepped_down' }, 0);
  for (const outcome of Object.values(OUTCOMES)) m.renewals.inc({ name, outcome }, 0);
  const onLog = (e: LeaderElectionLogEvent) => {
    if (e.kind === 'elected') m.changes.inc({ name, transition: 'elected' });
    else if (e.kind === 'stepped_down') m.changes.inc({ name, transition: 'stepped_down' });
    const outcome = OUTCOMES[e.kind];
    if (outcome !== undefined) {
      m.renewals.inc({ name, outcome });
      if (e.latencyMs !== null) m.duration.observe({ name }, e.latencyMs / 1000);
    }
    if (e.operation !== null) m.storeErrors.inc({ name, operation: e.operation });
  };
  source.on('log', onLog);
  return () => {
    source.off('log', onLog);
    m.tracked.delete(entry);
  };
}
