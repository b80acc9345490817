-- leaderlease schema, version 1.
--
-- The one source of the lease table's DDL: the Rust crate embeds this file, and the npm package ships it
-- for its TypeScript rendering (ts/sql.ts, byte for byte the crate's: tests/no-addon.test.ts). Placeholders:
--   {{schema}}    the schema name, already quoted as an identifier ("my_schema")
--   {{ddl_lock}}  the advisory-lock key pair (two int4 literals) that serialises concurrent runs
--
-- Idempotent: every statement can run again, and a table created by nest-leader-election 1.1.2
-- (id, leader_id, expires_at, created_at, the CHECK and the leader_lease_expires index) is upgraded in place.
-- Runs as one transaction (a multi-statement simple query, or inside a TypeORM migration).

SELECT pg_advisory_xact_lock({{ddl_lock}});

CREATE SCHEMA IF NOT EXISTS {{schema}};

-- Fencing tokens: one sequence per schema. An acquisition takes the largest of its next value, the
-- database clock in epoch microseconds and the row's previous term + 1, and writes that back, so the
-- sequence holds the largest term issued. It is one of three memories of earlier terms: a sequence
-- created afresh here (or set back) is overtaken by the clock and by a remaining row, so nothing has to be
-- synchronised after this script (docs/design.md, "Terms").
CREATE SEQUENCE IF NOT EXISTS {{schema}}.leader_lease_term_seq AS BIGINT MINVALUE 1;

CREATE TABLE IF NOT EXISTS {{schema}}.leader_lease (
    id          INT PRIMARY KEY,
    leader_id   TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    CHECK (expires_at > created_at)
);

-- Columns added by leaderlease (absent from a 1.1.2 table; a row written by 1.1.2 gets term 0).
ALTER TABLE {{schema}}.leader_lease ADD COLUMN IF NOT EXISTS term BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {{schema}}.leader_lease ADD COLUMN IF NOT EXISTS renewed_at TIMESTAMPTZ NOT NULL DEFAULT NOW();

CREATE INDEX IF NOT EXISTS leader_lease_expires ON {{schema}}.leader_lease (expires_at);
