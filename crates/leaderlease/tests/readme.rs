//! The repository README's Rust block is `readme_example` below, word for word (the lines between its
//! two marker comments), so the README shows code that compiles against the crate. The block is a part of
//! an async function (it uses `?` and `.await`); `MyError` is the reader's own error type.

#[derive(Debug)]
struct MyError;

impl From<leaderlease::Error> for MyError {
    fn from(_: leaderlease::Error) -> Self {
        MyError
    }
}

#[allow(dead_code, unused_variables)]
#[rustfmt::skip]
async fn readme_example() -> Result<(), MyError> {
// README begin
use std::time::Duration;
use leaderlease::Elector;

let elector = Elector::builder()
    .with_lock_id(42)                              // one row per election
    .with_lease_duration(Duration::from_secs(10))
    .connect("postgres://app@db/app")              // or .start_with_pool(pool), .start_with_hub(&hub)
    .await?;

if elector.is_leader() {            // sync, lock-free, no I/O
    let fence = elector.term();     // Some(term) while leading
}

// Run work while leading; the token is cancelled the moment leadership ends.
elector.run_while_leader(|token| async move {
    while !token.is_cancelled() { /* ... */ }
    Ok::<_, MyError>(())
}).await?;

elector.shutdown().await?;          // release, stop, close connections
// README end
    Ok(())
}

#[test]
fn the_readme_rust_block_is_the_compiled_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Ok(readme) = std::fs::read_to_string(root.join("README.md")) else {
        eprintln!("no repository README.md (a packaged crate): nothing to compare");
        return;
    };
    // Every ```rust block of the README (one today).
    let mut blocks = Vec::new();
    let mut rest = readme.as_str();
    while let Some(at) = rest.find("\n```rust\n") {
        let start = at + "\n```rust\n".len();
        let end = start + rest[start..].find("\n```").expect("the closing fence");
        blocks.push(rest[start..end].to_owned());
        rest = &rest[end + 4..];
    }
    let source = include_str!("readme.rs");
    let begin =
        source.find("// README begin\n").expect("the begin marker") + "// README begin\n".len();
    let end = begin
        + source[begin..]
            .find("\n// README end")
            .expect("the end marker");
    assert_eq!(blocks, vec![source[begin..end].to_owned()]);
}
