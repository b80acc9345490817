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

-- Fleet membership (docs/design.md, "Fleet"): one row per live process (a hub) that takes part in a
-- fleet, with a lease of its own that the process renews. A member whose row has expired by the database
-- clock is gone; the plan of who campaigns for which name is made from the live rows. It decides only who
-- tries: the lease rows above still decide who leads. Not used by plain elections.
CREATE TABLE IF NOT EXISTS {{schema}}.leader_lease_member (
    id          TEXT PRIMARY KEY,
    version     TEXT,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    renewed_at  TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    expires_at  TIMESTAMPTZ NOT NULL
);

-- The fence the database enforces (docs/design.md, "A fence in the database"). A leader calls it inside
-- its own transaction, best as the last statement before COMMIT, with its lock id and term. It takes a
-- share lock on the lease row, so no one can take the lease over (nor renew it) until that transaction
-- ends, and raises SQLSTATE LLF01 unless the row holds this term with an expiry still ahead by the
-- database clock (clock_timestamp(), not the transaction's start). So a leader paused past its lease has
-- its commit refused, and a write that passed the fence commits before any later leadership begins.
-- search_path is fixed on the function: the body names the table without its schema, and no one can
-- shadow it with a temporary table.
CREATE OR REPLACE FUNCTION {{schema}}.leader_lease_fence(lock_id INT, term BIGINT)
RETURNS BIGINT
LANGUAGE plpgsql
SET search_path = {{schema}}, pg_catalog, pg_temp
AS $fence$
DECLARE
    held_term BIGINT;
    held_until TIMESTAMPTZ;
BEGIN
    SELECT l.term, l.expires_at INTO held_term, held_until
      FROM leader_lease AS l
     WHERE l.id = leader_lease_fence.lock_id
       FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'leaderlease fence: lock % has no lease; term % does not lead', lock_id, term
            USING ERRCODE = 'LLF01';
    ELSIF held_term <> leader_lease_fence.term THEN
        RAISE EXCEPTION 'leaderlease fence: lock % is held by term %, not term %', lock_id, held_term, term
            USING ERRCODE = 'LLF01';
    ELSIF held_until <= clock_timestamp() THEN
        RAISE EXCEPTION 'leaderlease fence: the lease of term % on lock % expired at %', term, lock_id,
            held_until USING ERRCODE = 'LLF01';
    END IF;
    RETURN held_term;
END
$fence$;
