/**
 * A NestJS worker with two scheduled jobs, each on its own named election, and an HTTP route that only
 * the leader of `report` serves; `/health` (Terminus: up while the database is reachable, leader or follower)
 * and `/metrics` (Prometheus: `leader_election_master_status` and the rest, per election).
 * `npm run demo -- --nest` (examples/nest/view.mjs) runs three of them.
 *
 * Environment: DATABASE_URL, INSTANCE (its instance id), PORT (HTTP), SCHEMA (default `public`).
 * Prints one JSON line per leadership event and job run, for the live view.
 */
import 'reflect-metadata';

import { setTimeout as sleep } from 'node:timers/promises';

import { Controller, Get, Header, Injectable, Module, UseGuards } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { Interval, ScheduleModule } from '@nestjs/schedule';
import { HealthCheck, HealthCheckService, TerminusModule } from '@nestjs/terminus';
import { register } from 'prom-client';

import {
  LeaderElectionHealthIndicator,
  LeaderElectorModule,
  LeaderElectorService,
  LeaderGuard,
  LeaderOnly,
} from '../../dist/index.js';

const instance = process.env['INSTANCE'] ?? `worker-${process.pid}`;
const say = (line: object) => process.stdout.write(`${JSON.stringify({ ...line, t: Date.now() })}\n`);
// The live view may be gone before this worker (Ctrl-C): its output is then dropped, not fatal.
process.stdout.on('error', () => undefined);

@Injectable()
class Jobs {
  /** A report that takes 1.2 s; stops early when its leadership ends, writes with its fencing term. */
  @Interval(2000)
  @LeaderOnly('report')
  async report(): Promise<void> {
    const { signal, term } = LeaderElectorService.current()!;
    say({ event: 'run-start', job: 'report', term });
    for (let step = 0; step < 6; step++) {
      if (signal.aborted) {
        say({ event: 'run-aborted', job: 'report', term, step });
        return;
      }
      await sleep(200); // one step of work, written with `term` as its fencing token
    }
    say({ event: 'run-end', job: 'report', term });
  }

  /** A quick cleanup every second, on its own election (it may lead on another instance). */
  @Interval(1000)
  @LeaderOnly('cleanup')
  cleanup(): void {
    say({ event: 'run', job: 'cleanup', term: LeaderElectorService.current()!.term });
  }
}

@Controller()
class ReportController {
  constructor(private readonly elector: LeaderElectorService) {}

  /** 503 with the leader's id unless this instance leads `report`. */
  @Get('report')
  @UseGuards(LeaderGuard.for('report'))
  report(): { instance: string; term: number | null } {
    return { instance, term: this.elector.election('report').term() };
  }
}

@Controller()
class OpsController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly leaderElection: LeaderElectionHealthIndicator,
  ) {}

  /** 200 while this instance reaches the database (a follower too), 503 once it has not for a lease. */
  @Get('health')
  @HealthCheck()
  check() {
    return this.health.check([() => this.leaderElection.isHealthy('leaderElection')]);
  }

  /** prom-client's default registry, where `metrics: true` registers every election of this app. */
  @Get('metrics')
  @Header('Content-Type', register.contentType)
  metrics(): Promise<string> {
    return register.metrics();
  }
}

@Module({
  imports: [
    ScheduleModule.forRoot(),
    TerminusModule,
    LeaderElectorModule.forRoot({
      connectionString: process.env['DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/test',
      schema: process.env['SCHEMA'] ?? 'public',
      instanceId: instance,
      leaseDuration: 3000,
      renewalInterval: 500,
      jitterRange: 200,
      spread: { discoveryInterval: 6000 },
      metrics: true,
    }),
    // `report` gets settings of its own; `cleanup` takes the forRoot ones.
    LeaderElectorModule.forFeature([{ name: 'report', leaseDuration: 4000 }]),
  ],
  controllers: [ReportController, OpsController],
  providers: [Jobs],
})
class AppModule {}

async function main(): Promise<void> {
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
  app.enableShutdownHooks(); // SIGTERM: the jobs are drained and the leases handed over at once
  await app.listen(Number(process.env['PORT'] ?? 0), '127.0.0.1');
  const elector = app.get(LeaderElectorService);
  for (const name of ['report', 'cleanup']) {
    const e = elector.election(name);
    e.on('elected', ({ term }) => say({ event: 'elected', name, term }));
    e.on('revoked', () => say({ event: 'revoked', name }));
    if (e.amILeader()) say({ event: 'elected', name, term: e.term() });
  }
  say({ event: 'up', instance });
}

main().catch((err: unknown) => {
  process.stderr.write(`${String((err as Error)?.stack ?? err)}\n`);
  process.exit(1);
});
