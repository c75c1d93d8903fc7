//! The optional publish webhook (`auth.publish_webhook`): after a publish's key has been
//! accepted, the admin's service is asked whether this stream may go live from this
//! address, in the spirit of nginx-rtmp's `on_publish`. One JSON POST, bounded by
//! `publish_webhook_timeout`; a 2xx answer admits, any other answer refuses with the
//! answer's `reason` (or its status), and no answer in time refuses (fail closed: an
//! admission check that can be skipped by making it slow is none). Answers, both ways,
//! are remembered per (stream, address) for `publish_webhook_cache`, up to
//! [`CACHE_ENTRIES`]; failures are not. The key itself is never sent.

use std::net::IpAddr;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

use crate::media::StreamId;

/// Most (stream, address) answers remembered at once.
pub const CACHE_ENTRIES: u64 = 10_000;
/// Most bytes of an answer read (for its reason).
const MAX_ANSWER_BYTES: usize = 4096;
/// Most characters of a refusal reason passed on to the publisher and the log.
const MAX_REASON_CHARS: usize = 200;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WebhookRefusal {
    #[error("the publish webhook refused: {0}")]
    Refused(String),
    #[error("the publish webhook did not answer ({0}); publishing is refused until it does")]
    Unavailable(String),
}

/// What the webhook receives.
#[derive(Debug, Serialize)]
pub struct PublishRequest<'a> {
    pub action: &'static str,
    /// The public stream name the key publishes.
    pub stream: &'a str,
    /// The publisher's address.
    pub address: String,
    /// The node asking.
    pub node: &'a str,
}

#[derive(Debug, Deserialize, Default)]
struct Answer {
    #[serde(default)]
    reason: Option<String>,
}

pub struct PublishWebhook {
    url: String,
    client: reqwest::Client,
    cache: Option<moka::future::Cache<(StreamId, IpAddr), Result<(), WebhookRefusal>>>,
    calls: Counter,
    refused: Counter,
    failures: Counter,
}

impl PublishWebhook {
    pub fn new(url: &str, timeout: Duration, cache_for: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).redirect(reqwest::redirect::Policy::none()).build()?;
        let cache = (!cache_for.is_zero()).then(|| moka::future::Cache::builder().max_capacity(CACHE_ENTRIES).time_to_live(cache_for).build());
        Ok(Self { url: url.to_owned(), client, cache, calls: Counter::default(), refused: Counter::default(), failures: Counter::default() })
    }

    pub fn register(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("publish_webhook");
        registry.register("calls", "Publish webhook requests (cached answers not counted)", self.calls.clone());
        registry.register("refused", "Publishes the webhook refused", self.refused.clone());
        registry.register("failures", "Webhook requests that failed or timed out (publish refused)", self.failures.clone());
    }

    /// Whether `stream` may be published from `address` now.
    pub async fn admit(&self, stream: &StreamId, address: IpAddr, node: &str) -> Result<(), WebhookRefusal> {
        let key = (stream.clone(), address);
        if let Some(cache) = &self.cache
            && let Some(answer) = cache.get(&key).await
        {
            return answer;
        }
        self.calls.inc();
        let request = PublishRequest { action: "publish", stream: stream.as_str(), address: address.to_string(), node };
        let answer = match self.ask(&request).await {
            Ok(answer) => answer,
            Err(reason) => {
                self.failures.inc();
                tracing::warn!(stream = %stream, %address, "publish webhook failed: {reason}");
                return Err(WebhookRefusal::Unavailable(reason));
            }
        };
        if answer.is_err() {
            self.refused.inc();
        }
        if let Some(cache) = &self.cache {
            cache.insert(key, answer.clone()).await;
        }
        answer
    }

    /// The webhook's verdict, or why none came.
    async fn ask(&self, request: &PublishRequest<'_>) -> Result<Result<(), WebhookRefusal>, String> {
        let mut response = self.client.post(&self.url).json(request).send().await.map_err(|e| describe(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(Ok(()));
        }
        let mut body = Vec::new();
        while body.len() < MAX_ANSWER_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) => return Err(describe(&e)),
            }
        }
        body.truncate(MAX_ANSWER_BYTES);
        let reason = serde_json::from_slice::<Answer>(&body).ok().and_then(|a| a.reason).unwrap_or_else(|| format!("HTTP {status}"));
        let reason: String = reason.chars().filter(|c| !c.is_control()).take(MAX_REASON_CHARS).collect();
        Ok(Err(WebhookRefusal::Refused(reason)))
    }
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        e.to_string()
    }
}
