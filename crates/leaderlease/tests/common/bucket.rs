//! A NATS JetStream KV bucket of the test's own.

use std::time::Duration;

use async_nats::jetstream;
use leaderlease::{Elector, ElectorBuilder};

/// A bucket of the test's own (a unique name on a server), deleted on drop.
pub struct Bucket {
    pub name: String,
    pub url: String,
}

impl Bucket {
    /// A bucket on the tests' NATS server ([`nats_url`](super::nats_url)).
    pub fn new(prefix: &str) -> Self {
        Self::on(prefix, super::nats_url())
    }

    /// A bucket on the server at `url`.
    pub fn on(prefix: &str, url: String) -> Self {
        Self {
            name: super::unique(prefix),
            url,
        }
    }

    /// A JetStream context on a new client of the bucket's server.
    pub async fn js(&self) -> jetstream::Context {
        jetstream::new(async_nats::connect(&self.url).await.unwrap())
    }

    /// Starts `builder` on this bucket.
    pub async fn start(&self, builder: ElectorBuilder) -> Elector {
        builder.connect_nats(&self.url, &self.name).await.unwrap()
    }

    /// Writes `value` to `key` with a per-message TTL of `ttl_secs`, as a node of another lease (or
    /// another program) would; returns the revision.
    pub async fn put_with_ttl(
        &self,
        key: &str,
        value: impl Into<bytes::Bytes>,
        ttl_secs: u64,
    ) -> u64 {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_TTL, ttl_secs.to_string());
        self.js()
            .await
            .publish_with_headers(format!("$KV.{}.{key}", self.name), headers, value.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }
}

impl Drop for Bucket {
    fn drop(&mut self) {
        let (name, url) = (self.name.clone(), self.url.clone());
        // Drop runs outside async context: a short-lived runtime on a thread of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(Ok(client)) =
                    tokio::time::timeout(Duration::from_secs(2), async_nats::connect(url)).await
                {
                    let _ = jetstream::new(client).delete_key_value(&name).await;
                }
            });
        })
        .join();
    }
}
