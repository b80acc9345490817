//! The NATS server the tests of one process share, and the binary the tests that start servers of their
//! own use.
//!
//! - `NATS_URL` set (scripts/nats-env.sh sets it, so `npm test` and scripts/test.sh do): used as it is.
//! - Otherwise the first test that needs NATS starts a throwaway server of a nats-server 2.10+ binary
//!   ([`nats_server_bin`]) on a free loopback port with JetStream in a temporary directory; every test of
//!   the process uses it, and it is stopped and its directory removed when the process ends, however it
//!   ends (the server runs under a small shell that waits for the end of a pipe only this process holds).
//! - Neither: the NATS tests are skipped, with one line on stderr saying why and how to run them.
//!
//! The machine's own server on 127.0.0.1:4222 is never used: Debian 12's is NATS 2.9, which the client
//! does not support.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The version scripts/nats-server-bin.sh installs (its `LL_NATS_SERVER_VERSION=` line).
fn pinned_version() -> &'static str {
    const SCRIPT: &str = include_str!("../../../../scripts/nats-server-bin.sh");
    SCRIPT
        .lines()
        .find_map(|l| l.strip_prefix("LL_NATS_SERVER_VERSION="))
        .map(str::trim)
        .expect("scripts/nats-server-bin.sh pins LL_NATS_SERVER_VERSION")
}

/// Where scripts/nats-server-bin.sh installs the pinned binary.
fn pinned_path() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    cache
        .join("leaderlease")
        .join(format!("nats-server-{}", pinned_version()))
        .join("bin")
        .join("nats-server")
}

/// The version `bin --version` prints (`nats-server: v2.15.1` -> (2, 15, 1)).
fn version_of(bin: &str) -> Result<(u32, u32, u32), String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{bin}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .trim_start_matches('v');
    let mut parts = v.split('.').map(|p| p.parse::<u32>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => Ok((a, b, c)),
        _ => Err(format!("{bin} --version printed {:?}", text.trim())),
    }
}

/// The first nats-server 2.10+ among `LEADERLEASE_NATS_SERVER`, the pinned binary of
/// scripts/nats-server-bin.sh and `nats-server` on `PATH`; or why there is none.
fn find_bin() -> Result<String, String> {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    match std::env::var("LEADERLEASE_NATS_SERVER") {
        Ok(bin) if !bin.is_empty() => candidates.push(("LEADERLEASE_NATS_SERVER", bin)),
        _ => tried.push("LEADERLEASE_NATS_SERVER is not set".to_owned()),
    }
    let pinned = pinned_path();
    if pinned.exists() {
        candidates.push(("the pinned binary", pinned.display().to_string()));
    } else {
        tried.push(format!("{} is not installed", pinned.display()));
    }
    candidates.push(("PATH", "nats-server".to_owned()));
    for (from, bin) in candidates {
        match version_of(&bin) {
            Ok((major, minor, patch)) if (major, minor) >= (2, 10) => {
                let _ = patch;
                return Ok(bin);
            }
            Ok((major, minor, patch)) => tried.push(format!(
                "{bin} ({from}) is {major}.{minor}.{patch}, older than 2.10"
            )),
            Err(e) if from == "PATH" => tried.push(format!("no nats-server on PATH ({e})")),
            Err(e) => tried.push(e),
        }
    }
    Err(tried.join("; "))
}

/// A nats-server 2.10+ binary, for the tests that start servers of their own (a restart, a cluster):
/// `LEADERLEASE_NATS_SERVER` (scripts/nats-env.sh sets it), else the pinned binary scripts/nats-server-bin.sh
/// installed, else `nats-server` on `PATH` if it is 2.10 or newer. Tests call [`skip_nats`] first.
pub fn nats_server_bin() -> String {
    static BIN: OnceLock<Result<String, String>> = OnceLock::new();
    BIN.get_or_init(find_bin)
        .clone()
        .unwrap_or_else(|why| panic!("no nats-server 2.10 or newer: {why}. {HOW}"))
}

const HOW: &str = "To run them: `bash scripts/nats-server-bin.sh` (installs the pinned server where the \
                   tests find it), or set NATS_URL to a NATS 2.10+ server with JetStream";

/// The throwaway server of this process: its URL, and the write end of the pipe whose end stops it.
struct Shared {
    url: String,
    _child: Child,
    _alive: ChildStdin,
}

fn shared() -> &'static Result<Shared, String> {
    static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();
    SHARED.get_or_init(|| {
        let bin = find_bin()?;
        let mut last = String::new();
        // A free port can be taken between the probe and the server's bind: try a few.
        for _ in 0..3 {
            match start_shared(&bin) {
                Ok(s) => return Ok(s),
                Err(e) => last = e,
            }
        }
        Err(format!(
            "the throwaway NATS server ({bin}) did not start: {last}"
        ))
    })
}

/// Runs `bin` under a shell that waits for end-of-file on its stdin (this process's end: the pipe's
/// write end is close-on-exec, so no other child holds it), then stops the server and removes its
/// directory.
const KEEPER: &str = r#"bin=$1 port=$2 dir=$3
"$bin" -a 127.0.0.1 -p "$port" -js -sd "$dir/store" >"$dir/log" 2>&1 </dev/null &
server=$!
read -r _
kill "$server" 2>/dev/null
wait "$server" 2>/dev/null
rm -rf "$dir""#;

fn start_shared(bin: &str) -> Result<Shared, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = std::env::temp_dir().join(format!(
        "leaderlease-tests-nats-{}-{port}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut child = Command::new("bash")
        .args(["-c", KEEPER, "nats-keeper", bin, &port.to_string()])
        .arg(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("bash: {e}"))?;
    let alive = child.stdin.take().expect("piped stdin");
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        // A fatal error (the port taken meanwhile, a store it cannot use) ends the server at once.
        if Instant::now() > until || log.contains("[FTL]") {
            drop(alive);
            let _ = child.wait();
            return Err(format!(
                "not listening on port {port}; its log: {}",
                log.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let version = version_of(bin)
        .map(|(a, b, c)| format!("{a}.{b}.{c}"))
        .unwrap_or_default();
    super::note(&format!(
        "leaderlease tests: NATS_URL is not set: started a throwaway NATS server {version} on \
         127.0.0.1:{port} for this test process ({bin})"
    ));
    Ok(Shared {
        url: format!("nats://127.0.0.1:{port}"),
        _child: child,
        _alive: alive,
    })
}

/// True when this test must be skipped: `NATS_URL` is not set and no nats-server 2.10+ can be started.
/// The first skip in a process prints one line on stderr (past the test harness's capture) saying why and
/// how to run the NATS tests. Call it first in every test that needs NATS.
pub fn skip_nats() -> bool {
    if std::env::var_os("NATS_URL").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    match shared() {
        Ok(_) => false,
        Err(why) => say_skipped(why),
    }
}

/// Like [`skip_nats`], for a test that starts NATS servers of its own ([`nats_server_bin`]) and needs
/// no shared one.
pub fn skip_nats_bin() -> bool {
    if std::env::var_os("NATS_URL").is_some_and(|v| !v.is_empty()) {
        return false;
    }
    match find_bin() {
        Ok(_) => false,
        Err(why) => say_skipped(&why),
    }
}

fn say_skipped(why: &str) -> bool {
    static SAID: Mutex<bool> = Mutex::new(false);
    let mut said = SAID.lock().unwrap_or_else(|p| p.into_inner());
    if !*said {
        *said = true;
        super::note(&format!(
            "leaderlease tests: SKIPPING the NATS tests: NATS_URL is not set and no nats-server 2.10+ \
             to start ({why}). {HOW}."
        ));
    }
    true
}

/// The NATS server of the tests: `NATS_URL`, or the throwaway server this process shares (started on
/// first use). Never the machine's server on 127.0.0.1:4222 (Debian 12's is 2.9, which the client does
/// not support). Tests call [`skip_nats`] first.
pub fn nats_url() -> String {
    if let Ok(url) = std::env::var("NATS_URL")
        && !url.is_empty()
    {
        return url;
    }
    match shared() {
        Ok(s) => s.url.clone(),
        Err(why) => panic!("NATS_URL is not set and {why}. {HOW}"),
    }
}
