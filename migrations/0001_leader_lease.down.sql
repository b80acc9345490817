-- Reverts 0001_leader_lease.up.sql: drops the fence function, the member and lease tables and the term
-- sequence. The schema itself is kept (it may hold other objects). Placeholders as in the up file. Terms
-- after a later UP still grow: they are never below the database clock in microseconds, which a DOWN does
-- not touch (docs/design.md, "Terms").

SELECT pg_advisory_xact_lock({{ddl_lock}});

DROP FUNCTION IF EXISTS {{schema}}.leader_lease_fence(INT, BIGINT);
DROP TABLE IF EXISTS {{schema}}.leader_lease_member;
DROP TABLE IF EXISTS {{schema}}.leader_lease;
DROP SEQUENCE IF EXISTS {{schema}}.leader_lease_term_seq;
