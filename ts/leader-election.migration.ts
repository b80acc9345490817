import type { MigrationInterface, QueryRunner } from 'typeorm';

import { downSql, upSql } from './sql.js';

/**
 * A TypeORM migration creating (or upgrading) the lease table, as nest-leader-election's class of the same
 * name: subclass it, set `name` (and `schema`, default `public`), and list it in the DataSource's
 * `migrations`. It runs the SQL of `migrations/` (the same the elector runs at start), so a migration user
 * can own the DDL while the runtime user starts with `createTableOnInit: false`. It needs no native addon:
 * the SQL is rendered in TypeScript, so migrations also run where no prebuilt binary fits.
 *
 * ```ts
 * class LeaderElectionMigration1700000000000 extends LeaderElectionMigrationBase {
 *   schema = 'leader_schema';
 *   name = 'LeaderElectionMigration1700000000000';
 * }
 * ```
 */
export class LeaderElectionMigrationBase implements MigrationInterface {
  /** Schema of the lease table. */
  schema = 'public';
  /** The migration's name (TypeORM requires one; set it in the subclass, with a timestamp). */
  name?: string;

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(upSql(this.schema));
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(downSql(this.schema));
  }
}
