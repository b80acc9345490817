//! `leaderlease::noleader`: a program written for the `noleader` crate runs with its import changed, with
//! leaderlease's semantics underneath (one leader, terms, a release handed over at once).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use leaderlease::noleader::{Leader, Status};
use tokio_util::sync::CancellationToken;

async fn candidate(bucket: &Bucket, id: &str) -> Leader {
    let client = async_nats::connect(nats_url()).await.unwrap();
    Leader::with_config(
        &bucket.name,
        "election_key",
        client,
        fast().with_instance_id(id),
    )
    .unwrap()
}

/// Who ran work, with which term, from when to when (None while still running).
type Runs = Arc<Mutex<Vec<(String, u64, Instant, Option<Instant>)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_and_run_gives_one_leader_at_a_time_and_a_closure_error_hands_over() {
    if skip_nats() {
        return;
    }
    let bucket = Bucket::new("nl_run");
    let runs = Runs::default();
    let mut tasks = Vec::new();
    let mut leaders = Vec::new();
    for id in ["a", "b"] {
        let leader = candidate(&bucket, id).await;
        leader.create_bucket().await.unwrap();
        leaders.push(leader.clone());
        let runs = runs.clone();
        let id = id.to_owned();
        tasks.push(tokio::spawn(async move {
            let l = leader.clone();
            leader
                .acquire_and_run(move |token| {
                    let (runs, id, l) = (runs.clone(), id.clone(), l.clone());
                    async move {
                        let term = l.term().expect("a term while leading");
                        let i = {
                            let mut r = runs.lock().unwrap();
                            r.push((id.clone(), term, Instant::now(), None));
                            r.len() - 1
                        };
                        // Lead for 1 s, then fail: acquire_and_run must return this error.
                        tokio::select! {
                            _ = token.cancelled() => {
                                runs.lock().unwrap()[i].3 = Some(Instant::now());
                                Ok(())
                            }
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {
                                runs.lock().unwrap()[i].3 = Some(Instant::now());
                                anyhow::bail!("work of {id} failed")
                            }
                        }
                    }
                })
                .await
        }));
    }
    // Each fails after leading for 1 s; the other then takes over at once (the lease is released).
    let mut errors = Vec::new();
    for t in tasks {
        errors.push(
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("acquire_and_run returned")
                .unwrap()
                .unwrap_err()
                .to_string(),
        );
    }
    errors.sort();
    assert_eq!(errors, ["work of a failed", "work of b failed"]);
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let (first, second) = if runs[0].2 < runs[1].2 {
        (&runs[0], &runs[1])
    } else {
        (&runs[1], &runs[0])
    };
    let first_end = first.3.unwrap();
    assert!(second.2 >= first_end, "two leaders at once: {runs:?}");
    let gap = second.2 - first_end;
    assert!(
        gap < Duration::from_millis(500),
        "handover after the first failed took {gap:?}"
    );
    assert!(second.1 > first.1, "terms {runs:?}");
    for l in &leaders {
        assert_eq!(l.is_leader().await, Status::Candidate);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_in_a_task_and_do_while_leader_as_in_noleader() {
    if skip_nats() {
        return;
    }
    let bucket = Bucket::new("nl_start");
    let a = candidate(&bucket, "a").await;
    assert_eq!(a.leader_id().await, "a");
    a.create_bucket().await.unwrap();
    assert_eq!(a.is_leader().await, Status::Candidate);
    let stop_a = CancellationToken::new();
    let started = tokio::spawn({
        let (a, stop) = (a.clone(), stop_a.clone());
        async move { a.start(stop).await }
    });
    let calls = Arc::new(Mutex::new(0u32));
    let work = tokio::spawn({
        let (a, calls) = (a.clone(), calls.clone());
        async move {
            // One unit of work per call, as noleader users write it: called again while leading.
            a.do_while_leader(move |token| {
                let calls = calls.clone();
                async move {
                    *calls.lock().unwrap() += 1;
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    Ok(())
                }
            })
            .await
        }
    });
    let until = Instant::now() + Duration::from_secs(3);
    while a.is_leader().await != Status::Leader {
        assert!(Instant::now() < until, "a never led");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let term = a.term().unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        *calls.lock().unwrap() >= 5,
        "the work ran {} times in 600 ms",
        calls.lock().unwrap()
    );
    // A second candidate waits; a's stop releases the lease and it takes over at once.
    let b = candidate(&bucket, "b").await;
    let stop_b = CancellationToken::new();
    let b_task = tokio::spawn({
        let (b, stop) = (b.clone(), stop_b.clone());
        async move { b.start(stop).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(b.is_leader().await, Status::Candidate);
    let stopped = Instant::now();
    stop_a.cancel();
    started.await.unwrap().unwrap();
    assert_eq!(a.is_leader().await, Status::Candidate);
    // do_while_leader returns once the election stopped.
    tokio::time::timeout(Duration::from_secs(2), work)
        .await
        .expect("do_while_leader returned")
        .unwrap()
        .unwrap();
    while b.is_leader().await != Status::Leader {
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "b did not take over"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = stopped.elapsed();
    assert!(took < Duration::from_millis(700), "handover took {took:?}");
    assert!(b.term().unwrap() > term);
    // One election per Leader at a time.
    let again = b.start(CancellationToken::new()).await.unwrap_err();
    assert!(again.to_string().contains("already running"), "{again}");
    stop_b.cancel();
    b_task.await.unwrap().unwrap();
}

/// The migration example of docs/nats.md is the module's compiled doc example, word for word.
#[test]
fn the_docs_example_is_the_compiled_doc_example() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let Ok(page) = std::fs::read_to_string(root.join("docs/nats.md")) else {
        eprintln!("no repository docs/nats.md (a packaged crate): nothing to compare");
        return;
    };
    let module = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/noleader.rs"),
    )
    .unwrap();
    let doc: String = module
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let block = |text: &str, fence: &str| -> String {
        let start = text.find(fence).expect("the example's opening fence") + fence.len();
        let end = start + text[start..].find("\n```").expect("the closing fence");
        text[start..end].trim().to_owned()
    };
    let in_doc = block(&doc, "```no_run\n");
    let in_page = block(
        &page[page
            .find("## Switching from noleader")
            .expect("the section")..],
        "```rust\n",
    );
    assert_eq!(in_page, in_doc);
}
