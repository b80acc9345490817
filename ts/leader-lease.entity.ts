import type * as TypeOrm from 'typeorm';

import { loadOptional, requirePeer } from './optional-deps.js';

/**
 * The `leader_lease` table as TypeORM sees it, described exactly as `migrations/0001_leader_lease.up.sql`
 * creates it (column types, defaults, the primary key, the CHECK and the index, with PostgreSQL's own
 * names for the unnamed ones), so that `synchronize: true` finds nothing to change in it.
 * The native core owns the table and its SQL: this description only keeps TypeORM from touching it.
 */

const typeorm = loadOptional<typeof TypeOrm>('typeorm');

/** Without TypeORM the decorators do nothing: `LeaderLease` stays a plain class nobody will use as entity. */
const noDecorator = () => () => undefined;
const Entity = typeorm?.Entity ?? (noDecorator as unknown as typeof TypeOrm.Entity);
const PrimaryColumn = typeorm?.PrimaryColumn ?? (noDecorator as unknown as typeof TypeOrm.PrimaryColumn);
const Column = typeorm?.Column ?? (noDecorator as unknown as typeof TypeOrm.Column);
const Index = typeorm?.Index ?? (noDecorator as unknown as typeof TypeOrm.Index);
const Check = typeorm?.Check ?? (noDecorator as unknown as typeof TypeOrm.Check);

/** The table's name. */
export const LEADER_LEASE_TABLE = 'leader_lease';
/** The name PostgreSQL gives the unnamed CHECK of the table. */
export const LEADER_LEASE_CHECK = 'leader_lease_check';
/** The CHECK's expression. */
export const LEADER_LEASE_CHECK_EXPRESSION = 'expires_at > created_at';
/** The index on `expires_at`. */
export const LEADER_LEASE_EXPIRES_INDEX = 'leader_lease_expires';
/** The name PostgreSQL gives the primary key. */
export const LEADER_LEASE_PRIMARY_KEY = 'leader_lease_pkey';

/** One lease row: which candidate holds lock `id`, until when, and with which fencing term. */
@Entity({ name: LEADER_LEASE_TABLE })
@Check(LEADER_LEASE_CHECK, LEADER_LEASE_CHECK_EXPRESSION)
@Index(LEADER_LEASE_EXPIRES_INDEX, ['expiresAt'])
export class LeaderLease {
  /** The lock id (one row per independent election). */
  @PrimaryColumn({ type: 'int', primaryKeyConstraintName: LEADER_LEASE_PRIMARY_KEY })
  id!: number;

  /** The instance id of the candidate holding the lease. */
  @Column({ type: 'text', name: 'leader_id' })
  leaderId!: string;

  /** When the lease ends, by the database's clock. */
  @Column({ type: 'timestamptz', name: 'expires_at' })
  expiresAt!: Date;

  /** When this leadership began. */
  @Column({ type: 'timestamptz', name: 'created_at', default: () => 'now()' })
  createdAt!: Date;

  /** The fencing term (a bigint, which the pg driver returns as a string). */
  @Column({ type: 'bigint', name: 'term', default: 0 })
  term!: string;

  /** When the lease was last renewed. */
  @Column({ type: 'timestamptz', name: 'renewed_at', default: () => 'now()' })
  renewedAt!: Date;
}

const entities = new Map<string, TypeOrm.EntitySchema<LeaderLease>>();

/**
 * The lease table in `schema` as a TypeORM `EntitySchema` named `LeaderLease` (the same object for the same
 * schema), as nest-leader-election's function of the same name. `LeaderElectorModule.forRoot` registers it.
 */
export function createLeaderLeaseEntity(schema: string = 'public'): TypeOrm.EntitySchema<LeaderLease> {
  const existing = entities.get(schema);
  if (existing) return existing;
  const { EntitySchema } = requirePeer<typeof TypeOrm>('typeorm', 'createLeaderLeaseEntity()');
  const entity = new EntitySchema<LeaderLease>({
    name: 'LeaderLease',
    tableName: LEADER_LEASE_TABLE,
    schema,
    columns: {
      id: { type: 'int', primary: true, primaryKeyConstraintName: LEADER_LEASE_PRIMARY_KEY },
      leaderId: { name: 'leader_id', type: 'text' },
      expiresAt: { name: 'expires_at', type: 'timestamptz' },
      createdAt: { name: 'created_at', type: 'timestamptz', default: () => 'now()' },
      term: { name: 'term', type: 'bigint', default: 0 },
      renewedAt: { name: 'renewed_at', type: 'timestamptz', default: () => 'now()' },
    },
    checks: [{ name: LEADER_LEASE_CHECK, expression: LEADER_LEASE_CHECK_EXPRESSION }],
    indices: [{ name: LEADER_LEASE_EXPIRES_INDEX, columns: ['expiresAt'] }],
  });
  entities.set(schema, entity);
  return entity;
}

/**
 * The lease table in `schema` as a TypeORM `Table`, as nest-leader-election's function of the same name
 * returns it (for `queryRunner.createTable(table, true)` in a hand-written migration). The term sequence
 * is not part of a `Table`: {@link LeaderElectionMigrationBase} runs the complete SQL instead, and the
 * elector creates the sequence itself unless `createTableOnInit` is false.
 */
export function createLeaderLeaseTable(schema: string = 'public'): TypeOrm.Table {
  const { Table } = requirePeer<typeof TypeOrm>('typeorm', 'createLeaderLeaseTable()');
  return new Table({
    schema,
    name: LEADER_LEASE_TABLE,
    columns: [
      { name: 'id', type: 'int', isPrimary: true, primaryKeyConstraintName: LEADER_LEASE_PRIMARY_KEY },
      { name: 'leader_id', type: 'text', isNullable: false },
      { name: 'expires_at', type: 'timestamptz', isNullable: false },
      { name: 'created_at', type: 'timestamptz', isNullable: false, default: 'now()' },
      { name: 'term', type: 'bigint', isNullable: false, default: 0 },
      { name: 'renewed_at', type: 'timestamptz', isNullable: false, default: 'now()' },
    ],
    checks: [{ name: LEADER_LEASE_CHECK, expression: LEADER_LEASE_CHECK_EXPRESSION }],
    indices: [{ name: LEADER_LEASE_EXPIRES_INDEX, columnNames: ['expires_at'] }],
  });
}
