//! Finds the SQL migrations that `src/schema.rs` embeds.
//!
//! The one source of the SQL is the repository's top-level `migrations/` (the npm package ships and reads
//! the same files). The crate reaches it through the symlink `migrations -> ../../migrations`, which
//! `cargo package` replaces by the files themselves, so a published crate carries them. A checkout where
//! git wrote that symlink as a plain file (Windows without `core.symlinks`) still builds: then the files are
//! read from `../../migrations` directly.

use std::path::PathBuf;

const FILES: [&str; 2] = ["0001_leader_lease.up.sql", "0001_leader_lease.down.sql"];

fn main() {
    // CARGO_MANIFEST_DIR is absolute, so the path handed to include_str! is too (not canonicalized: on
    // Windows that would give a verbatim `\\?\` path, in which the `/` that schema.rs appends is no separator).
    let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let candidates = [
        manifest_dir.join("migrations"),
        manifest_dir.join("../../migrations"),
    ];
    let dir = candidates
        .iter()
        .find(|dir| FILES.iter().all(|f| dir.join(f).is_file()))
        .unwrap_or_else(|| panic!("the SQL migrations {FILES:?} are in none of {candidates:?}"));
    for f in FILES {
        println!("cargo::rerun-if-changed={}", dir.join(f).display());
    }
    println!(
        "cargo::rustc-env=LEADERLEASE_MIGRATIONS_DIR={}",
        dir.display()
    );
}
