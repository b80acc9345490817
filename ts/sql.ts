import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { LeaderElectionConfigError } from './errors.js';

/**
 * The lease table's DDL, rendered in TypeScript from the same `.sql` files the Rust crate embeds (they
 * ship in the npm package), so that the migration class and `upSql()` / `downSql()` work where the native
 * addon cannot be loaded. The rendering is `crates/leaderlease/src/schema.rs`'s, byte for byte (a test
 * compares the two): `{{schema}}` becomes the quoted identifier, `{{ddl_lock}}` the advisory-lock key pair.
 */

/** Where the `.sql` files are, from `dist/` of the installed package: the one place to change if they move. */
const SQL_DIR = join(__dirname, '..', 'migrations');
const UP_FILE = '0001_leader_lease.up.sql';
const DOWN_FILE = '0001_leader_lease.down.sql';
/** The schema when none is given (the crate's `DEFAULT_SCHEMA`). */
const DEFAULT_SCHEMA = 'public';

const templates = new Map<string, string>();

function template(file: string): string {
  let text = templates.get(file);
  if (text === undefined) {
    text = readFileSync(join(SQL_DIR, file), 'utf8');
    templates.set(file, text);
  }
  return text;
}

/**
 * The schema name as the native binding receives it: `undefined` / `null` mean `public`; a lone UTF-16
 * surrogate becomes U+FFFD, as in napi's conversion to a Rust `String`.
 */
function schemaName(schema: unknown): string {
  if (schema === undefined || schema === null) return DEFAULT_SCHEMA;
  if (typeof schema !== 'string') {
    throw new LeaderElectionConfigError(
      `invalid leader election config: schema must be a string (got ${typeof schema})`,
    );
  }
  return Buffer.from(schema, 'utf8').toString('utf8');
}

/** Quotes `name` as a PostgreSQL identifier (double quotes around it, any inside doubled). */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** 32-bit FNV-1a over the UTF-8 bytes of `prefix` and `s`, as a signed int4 (the crate's `fnv1a`). */
function fnv1a(prefix: string, s: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(prefix + s, 'utf8')) {
    h = Math.imul(h ^ b, 0x01000193);
  }
  return h | 0;
}

/** Fills the placeholders in one pass: text put in is never scanned again (the crate's `render`). */
function render(text: string, schema: string): string {
  let out = '';
  let rest = text;
  for (let start = rest.indexOf('{{'); start >= 0; start = rest.indexOf('{{')) {
    out += rest.slice(0, start);
    rest = rest.slice(start);
    if (rest.startsWith('{{schema}}')) {
      out += quoteIdent(schema);
      rest = rest.slice('{{schema}}'.length);
    } else if (rest.startsWith('{{ddl_lock}}')) {
      out += `${fnv1a('leaderlease-ddl:', schema)}, 0`;
      rest = rest.slice('{{ddl_lock}}'.length);
    } else {
      out += '{{';
      rest = rest.slice(2);
    }
  }
  return out + rest;
}

/** The SQL that creates (or upgrades) the lease table in `schema` (default `public`). */
export function upSql(schema?: string | null): string {
  return render(template(UP_FILE), schemaName(schema));
}

/** The SQL that drops the lease table and its sequence from `schema` (default `public`). */
export function downSql(schema?: string | null): string {
  return render(template(DOWN_FILE), schemaName(schema));
}
