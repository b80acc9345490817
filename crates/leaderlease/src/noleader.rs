//! The API of the `noleader` crate on leaderlease's NATS backend (feature `noleader`): a program written
//! for `noleader` switches by changing its import from `noleader::Leader` to
//! `leaderlease::noleader::Leader` (and its `async-nats` to the version leaderlease uses, 0.51, re-exported
//! as [`leaderlease::nats::async_nats`](crate::nats::async_nats)).
//!
//! The shape is the same: [`Leader::new`]`(bucket, key, client)`, [`create_bucket`](Leader::create_bucket),
//! [`start`](Leader::start), [`acquire_and_run`](Leader::acquire_and_run),
//! [`do_while_leader`](Leader::do_while_leader), [`is_leader`](Leader::is_leader) returning [`Status`],
//! [`leader_id`](Leader::leader_id), closures taking a `CancellationToken` and returning
//! `anyhow::Result<()>`. Underneath is an [`Elector`](crate::Elector): leadership ends at the local
//! deadline (the lease counted from when the write was sent), never later, every leadership has a term
//! ([`Leader::term`]), a crashed leader's key expires after the lease and is taken over at once, a
//! released one at once too. What differs: the section "Switching from noleader" of the repository's
//! docs/nats.md.
//!
//! That section's example, compiled:
//!
//! ```no_run
//! use leaderlease::noleader::Leader;
//!
//! #[tokio::main]
//! async fn main() -> anyhow::Result<()> {
//!     let bucket = "my_bucket";
//!     let key = "election_key";
//!     let client = async_nats::connect("localhost:4222").await?;
//!
//!     let leader = Leader::new(bucket, key, client.clone());
//!     let leader_id = leader.leader_id().await.to_string();
//!
//!     // Makes the bucket if it is missing (an existing noleader bucket is used as it is).
//!     leader.create_bucket().await?;
//!
//!     // Campaigns, and runs the closure whenever this node leads; its token is cancelled the moment
//!     // leadership ends. Returns the closure's first error (or the election's).
//!     leader
//!         .acquire_and_run({
//!             move |token| {
//!                 let leader_id = leader_id.clone();
//!                 async move {
//!                     loop {
//!                         if token.is_cancelled() {
//!                             return Ok(());
//!                         }
//!                         tracing::info!(leader_id, "do work as leader");
//!                         tokio::time::sleep(std::time::Duration::from_secs(1)).await;
//!                     }
//!                 }
//!             }
//!         })
//!         .await?;
//!
//!     Ok(())
//! }
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::nats::{NatsBackend, async_nats};
use crate::{Elector, ElectorBuilder, ElectorConfig};

/// Whether this node leads, as [`Leader::is_leader`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// This node holds the lease, within its local deadline.
    Leader,
    /// This node does not lead (it campaigns, or it has stopped).
    Candidate,
}

/// One candidate of the election `key` in the KV bucket `bucket`. Cheap to clone; the clones share the
/// election.
#[derive(Clone)]
pub struct Leader {
    inner: Arc<Inner>,
}

struct Inner {
    bucket: String,
    key: String,
    client: async_nats::Client,
    config: ElectorConfig,
    /// The running election, once [`Leader::start`] has made it; `None` again after it stopped.
    elector: watch::Sender<Option<Arc<Elector>>>,
}

impl std::fmt::Debug for Leader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("bucket", &self.inner.bucket)
            .field("key", &self.inner.key)
            .field("instance_id", &self.inner.config.instance_id())
            .finish()
    }
}

impl Leader {
    /// A candidate with leaderlease's default timing (lease 10 s, renewal every 3 s ± 1 s).
    pub fn new(bucket: &str, key: &str, client: async_nats::Client) -> Self {
        Self::with_config(bucket, key, client, Elector::builder())
            .expect("the default settings are valid")
    }

    /// A candidate with the settings of `builder` (lease duration, renewal interval, instance id, ...).
    /// Fails when they break a rule (e.g. the renewal interval is not below the lease).
    pub fn with_config(
        bucket: &str,
        key: &str,
        client: async_nats::Client,
        builder: ElectorBuilder,
    ) -> crate::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                client,
                config: builder.build()?,
                elector: watch::channel(None).0,
            }),
        })
    }

    /// This candidate's id (its instance id), as it appears in the key while it leads.
    pub async fn leader_id(&self) -> String {
        self.inner.config.instance_id().to_owned()
    }

    /// Makes the bucket if it does not exist (per-key TTL with limit markers on NATS 2.11+), and checks
    /// that an existing one can hold this lease (see
    /// [`NatsBackend::create_bucket`](crate::NatsBackend::create_bucket)).
    pub async fn create_bucket(&self) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(self.inner.client.clone());
        NatsBackend::create_bucket(&js, &self.inner.bucket, self.inner.config.lease_duration())
            .await?;
        Ok(())
    }

    /// Campaigns until `cancellation_token` is cancelled, then releases the lease (if held) and returns.
    /// Fails at once when the election cannot start (the server is unreachable or too old, the bucket is
    /// unfit); errors while it runs are retried, never returned. Only one `start` runs at a time.
    pub async fn start(&self, cancellation_token: CancellationToken) -> anyhow::Result<()> {
        let elector = self.spawn().await?;
        cancellation_token.cancelled().await;
        self.inner.elector.send_replace(None);
        elector.shutdown().await?;
        Ok(())
    }

    /// Starts the election, returns it and publishes it to the other methods.
    async fn spawn(&self) -> anyhow::Result<Arc<Elector>> {
        if self.inner.elector.borrow().is_some() {
            anyhow::bail!(
                "the election for key {:?} in bucket {:?} is already running",
                self.inner.key,
                self.inner.bucket
            );
        }
        let backend = NatsBackend::new(
            self.inner.client.clone(),
            &self.inner.bucket,
            &self.inner.config,
        )
        .with_key(self.inner.key.clone());
        let elector = Arc::new(Elector::start(backend, self.inner.config.clone()).await?);
        self.inner.elector.send_replace(Some(elector.clone()));
        Ok(elector)
    }

    /// Campaigns and runs `f` whenever this node leads, as [`do_while_leader`](Self::do_while_leader)
    /// does, until `f` returns an error, which is returned after the lease is released. Fails at once
    /// when the election cannot start.
    pub async fn acquire_and_run<F, Fut>(&self, f: F) -> anyhow::Result<()>
    where
        F: Fn(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let elector = self.spawn().await?;
        let result = run(&elector, &f).await;
        self.inner.elector.send_replace(None);
        elector.shutdown().await?;
        result
    }

    /// Runs `f` whenever this node leads, with a token that is cancelled the moment leadership ends (the
    /// local deadline, a lost renewal, a release or shutdown); `f` is called again as long as it returns
    /// `Ok` while this node still leads. Returns `f`'s first error. Needs the election running
    /// ([`start`](Self::start) in another task); waits for it otherwise. Returns `Ok` when the election
    /// stops.
    pub async fn do_while_leader<F, Fut>(&self, f: F) -> anyhow::Result<()>
    where
        F: Fn(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut electors = self.inner.elector.subscribe();
        let elector = loop {
            if let Some(elector) = electors.borrow_and_update().clone() {
                break elector;
            }
            if electors.changed().await.is_err() {
                return Ok(());
            }
        };
        run(&elector, &f).await
    }

    /// [`Status::Leader`] while this node leads (the elector's [`is_leader`](Elector::is_leader): false
    /// from the local deadline on), else [`Status::Candidate`], also before the election started and after
    /// it stopped.
    pub async fn is_leader(&self) -> Status {
        match &*self.inner.elector.borrow() {
            Some(elector) if elector.is_leader() => Status::Leader,
            _ => Status::Candidate,
        }
    }

    /// The fencing term of this node's leadership while it leads: it grows with every leadership of the
    /// key. Pass it to what the leader's work changes, so a write of a former leader can be refused.
    pub fn term(&self) -> Option<u64> {
        self.inner.elector.borrow().as_ref().and_then(|e| e.term())
    }

    /// The running election, for the rest of leaderlease's API (status stream, release, leader info).
    pub fn elector(&self) -> Option<Arc<Elector>> {
        self.inner.elector.borrow().clone()
    }
}

/// Calls `f` again and again while `elector` leads (with a token cancelled when the leadership ends), from
/// one leadership to the next, until `f` fails or the elector stops.
async fn run<F, Fut>(elector: &Elector, f: &F) -> anyhow::Result<()>
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    elector
        .run_while_leader(|token| async move {
            while !token.is_cancelled() {
                f(token.child_token()).await?;
                // A closure that returns at once must not starve the runtime.
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(())
        })
        .await
}
