//! `leaderlease status`: every lease of a schema and the live fleet members, by the database clock.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use leaderlease::Error;
use leaderlease::fleet::MemberInfo;
use leaderlease::leases::{LeaseRow, LeaseTable};

use crate::args::{Db, human_ms};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    db: Db,
    /// Print JSON (one object: table, database_time, leases[], members[] or null) instead of a table
    #[arg(long)]
    json: bool,
}

pub async fn main(a: StatusArgs) -> ExitCode {
    if let Err(m) = a.db.check_schema() {
        eprintln!("leaderlease: {m}");
        return ExitCode::from(2);
    }
    let hub = match a.db.connect(Duration::from_secs(10)).await {
        Ok(hub) => hub,
        Err(e) => return crate::fail("status", &e),
    };
    let listed = leaderlease::leases::list(hub.pool(), &a.db.schema).await;
    let members = match &listed {
        Ok(_) => leaderlease::list_members(hub.pool(), &a.db.schema).await,
        Err(_) => Ok(None),
    };
    hub.close().await;
    let members = match members {
        Ok(m) => m,
        Err(e) => return crate::fail("status", &e),
    };
    let table = match listed {
        Ok(t) => t,
        Err(Error::TableMissing { table, problem }) => {
            eprintln!(
                "leaderlease: the lease table {table} {problem} (ERR_TABLE_MISSING): create or \
                 upgrade it with `leaderlease migrate up --schema {}`",
                shell_word(&a.db.schema)
            );
            return ExitCode::FAILURE;
        }
        Err(e) => return crate::fail("status", &e),
    };
    let text = if a.json {
        json(&table, members.as_deref())
    } else {
        human(&table) + &members_line(members.as_deref())
    };
    // Not `println!`: a closed pipe (`| head`) is an error to report, not a panic.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leaderlease: cannot write the status: {e}");
            ExitCode::FAILURE
        }
    }
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The `members` line: the live members of the schema's fleet, with their versions.
fn members_line(members: Option<&[MemberInfo]>) -> String {
    let Some(members) = members else {
        return "members: no member table (run `leaderlease migrate up` to add it)\n".to_owned();
    };
    if members.is_empty() {
        return "members: none\n".to_owned();
    }
    let list: Vec<String> = members
        .iter()
        .map(|m| match &m.version {
            Some(v) => format!("{} ({v})", m.id),
            None => m.id.clone(),
        })
        .collect();
    format!("members: {} live: {}\n", members.len(), list.join(", "))
}

fn json(t: &LeaseTable, members: Option<&[MemberInfo]>) -> String {
    let leases: Vec<_> = t
        .leases
        .iter()
        .map(|l| {
            serde_json::json!({
                "lock_id": l.lock_id,
                "leader_id": l.leader_id,
                "term": l.term,
                "live": l.is_live(),
                "expires_in_ms": l.expires_in_ms.round() as i64,
                "renewed_ago_ms": l.renewed_ago_ms.round() as i64,
                "held_for_ms": l.held_for_ms.round() as i64,
            })
        })
        .collect();
    let members = members.map(|list| {
        list.iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "version": m.version,
                    "started_at_us": m.started_at_us,
                })
            })
            .collect::<Vec<_>>()
    });
    let doc = serde_json::json!({
        "table": t.table,
        "database_time": t.database_time,
        "leases": leases,
        "members": members,
    });
    format!("{doc}\n")
}

fn human(t: &LeaseTable) -> String {
    let mut out = format!("{} at {} (database clock)\n", t.table, t.database_time);
    if t.leases.is_empty() {
        out.push_str("no leases\n");
        return out;
    }
    let rows: Vec<[String; 6]> = t.leases.iter().map(row).collect();
    let head = [
        "LOCK ID",
        "LEADER",
        "TERM",
        "EXPIRES IN",
        "RENEWED AGO",
        "LEADING FOR",
    ];
    let mut width: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_owned() + "\n"
    };
    out.push_str(&line(head.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn row(l: &LeaseRow) -> [String; 6] {
    let (expires, leading) = if l.is_live() {
        (human_ms(l.expires_in_ms), human_ms(l.held_for_ms))
    } else {
        (
            format!("expired {} ago", human_ms(l.expires_in_ms)),
            "-".into(),
        )
    };
    [
        l.lock_id.to_string(),
        l.leader_id.clone(),
        l.term.to_string(),
        expires,
        human_ms(l.renewed_ago_ms),
        leading,
    ]
}
