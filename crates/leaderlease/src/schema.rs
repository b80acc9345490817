//! The lease table's DDL (from `migrations/`), rendered for a schema, and identifier quoting.

// `build.rs` finds the directory: the crate's `migrations/` (a symlink to the top-level one in the
// repository, the files themselves in a published crate).
const UP: &str = include_str!(concat!(
    env!("LEADERLEASE_MIGRATIONS_DIR"),
    "/0001_leader_lease.up.sql"
));
const DOWN: &str = include_str!(concat!(
    env!("LEADERLEASE_MIGRATIONS_DIR"),
    "/0001_leader_lease.down.sql"
));

/// Name of the lease table inside its schema (the name nest-leader-election uses).
pub const TABLE: &str = "leader_lease";
/// Name of the sequence that hands out fencing terms.
pub const TERM_SEQUENCE: &str = "leader_lease_term_seq";

/// Quotes `name` as a PostgreSQL identifier: wraps it in double quotes and doubles any inside, so that
/// mixed case is kept and nothing in it can end the identifier.
///
/// ```
/// assert_eq!(leaderlease::schema::quote_ident("MySchema"), r#""MySchema""#);
/// assert_eq!(leaderlease::schema::quote_ident(r#"a"b"#), r#""a""b""#);
/// ```
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The first key of every advisory lock this crate takes for `schema`: a 32-bit FNV-1a hash of a
/// leaderlease-specific prefix and the schema name. Using the two-key form with this namespace keeps the
/// election's locks apart from the application's own one-key (bigint) advisory locks.
pub fn lock_namespace(schema: &str) -> i32 {
    fnv1a(b"leaderlease:", schema)
}

/// The first key of the advisory lock (second key 0) under which an acquisition in `schema` issues its
/// term: taken for the rest of the acquiring transaction, so terms are issued one at a time per schema
/// and the term sequence never moves backwards (see docs/design.md, "Terms").
pub fn term_lock_namespace(schema: &str) -> i32 {
    fnv1a(b"leaderlease-term:", schema)
}

/// The namespace of the notifications that announce a member joining or leaving the fleet of `schema`
/// (payload `<namespace>:0` on the release channel).
pub fn member_namespace(schema: &str) -> i32 {
    fnv1a(b"leaderlease-members:", schema)
}

fn ddl_lock_namespace(schema: &str) -> i32 {
    fnv1a(b"leaderlease-ddl:", schema)
}

fn fnv1a(prefix: &[u8], s: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in prefix.iter().chain(s.as_bytes()) {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// Fills the `{{schema}}` and `{{ddl_lock}}` placeholders in one pass: text put in is never scanned
/// again, so a schema name that itself contains a placeholder stays literal.
fn render(template: &str, schema: &str) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(tail) = after.strip_prefix("{{schema}}") {
            out.push_str(&quote_ident(schema));
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("{{ddl_lock}}") {
            out.push_str(&format!("{}, 0", ddl_lock_namespace(schema)));
            rest = tail;
        } else {
            out.push_str("{{");
            rest = &after[2..];
        }
    }
    out.push_str(rest);
    out
}

/// The SQL that creates (or upgrades in place) the lease table, its sequence and index in `schema`.
/// Idempotent; meant to run as one transaction (PostgreSQL's simple-query protocol does this for a
/// multi-statement string, and so does a TypeORM migration).
pub fn up_sql(schema: &str) -> String {
    render(UP, schema)
}

/// The SQL that drops the lease table and its sequence from `schema` (the schema itself is kept).
pub fn down_sql(schema: &str) -> String {
    render(DOWN, schema)
}

/// `"schema".leader_lease`, quoted.
pub fn qualified_table(schema: &str) -> String {
    format!("{}.{TABLE}", quote_ident(schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_sql_has_no_placeholder_left_and_quotes_the_schema() {
        for sql in [up_sql("My\"Schema"), down_sql("My\"Schema")] {
            assert!(!sql.contains("{{"), "{sql}");
            assert!(sql.contains(r#""My""Schema".leader_lease"#), "{sql}");
        }
    }

    #[test]
    fn a_placeholder_inside_the_schema_name_stays_literal() {
        let sql = up_sql("x{{ddl_lock}}");
        assert!(sql.contains(r#""x{{ddl_lock}}".leader_lease"#), "{sql}");
    }

    #[test]
    fn namespaces_depend_on_the_schema() {
        assert_ne!(lock_namespace("a"), lock_namespace("b"));
        assert_ne!(lock_namespace("a"), ddl_lock_namespace("a"));
        assert_ne!(lock_namespace("a"), term_lock_namespace("a"));
        assert_ne!(term_lock_namespace("a"), ddl_lock_namespace("a"));
        assert_ne!(member_namespace("a"), lock_namespace("a"));
        assert_eq!(lock_namespace("public"), lock_namespace("public"));
    }
}
