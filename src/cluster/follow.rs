//! The watch task: keeps this server's registry equal to etcd's.
//!
//! It lists the registry (unless [`super::start`] already did), then watches the prefix from
//! the next revision. Each watch response becomes one
//! [`Registry::apply_remote`](crate::registry::Registry::apply_remote) call (one new snapshot)
//! and one update of the mirror and of the local cache. Changes reach the other servers as
//! fast as etcd delivers watch events — milliseconds on a LAN.
//!
//! When the connection is lost (etcd stopped, partitioned: HTTP/2 keep-alives notice within
//! about 3 s), the task logs it once, keeps the registry as it is (DNS goes on answering from
//! it), and retries with a backoff of at most [`MAX_BACKOFF`]. When etcd answers again it
//! resumes the watch from the last revision it saw, so nothing is missed; if etcd compacted
//! that revision away meanwhile, it lists the whole registry again instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, EventType, WatchOptions};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_util::sync::CancellationToken;

use super::store::{Key, Shared, lock};
use super::{REQUEST_TIMEOUT, list, parse_instance, parse_key};
use crate::registry::Registry;
use crate::registry::model::{InstanceId, ServiceName};
use crate::store::commit::Committer;
use crate::store::{Change, StoredInstance};

/// The longest wait between two attempts to reach etcd.
pub const MAX_BACKOFF: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// What the watch task is made of (see [`super::start`]).
pub struct FollowerParts {
    pub client: Client,
    pub instances_prefix: String,
    pub endpoints: String,
    pub shared: Arc<Mutex<Shared>>,
    pub redo: UnboundedReceiver<Key>,
    /// The local cache of the mirror, in the data directory.
    pub cache: Option<Committer>,
    /// The revision the first listing was read at, if [`super::start`] listed.
    pub resume_from: Option<i64>,
    /// Credentials still to authenticate with (etcd was unreachable at start).
    pub user: Option<(String, String)>,
}

/// The watch task.
pub struct Follower {
    parts: FollowerParts,
}

/// Why following stopped.
enum Stop {
    Shutdown,
    Lost(String),
}

impl Follower {
    pub fn new(parts: FollowerParts) -> Self {
        Self { parts }
    }

    /// Runs until `shutdown`.
    pub async fn run(mut self, registry: Arc<Registry>, shutdown: CancellationToken) {
        let mut connected = self.parts.resume_from.is_some();
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.follow(&registry, &shutdown, &mut connected).await {
                Stop::Shutdown => break,
                Stop::Lost(error) => {
                    if connected {
                        tracing::warn!(
                            endpoints = %self.parts.endpoints, %error,
                            "etcd connection lost: serving the last registry seen; writes \
                             answer 503 until etcd is back"
                        );
                        connected = false;
                        backoff = MIN_BACKOFF;
                    } else {
                        tracing::debug!(%error, "etcd still unreachable");
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        if let Some(cache) = self.parts.cache.take() {
            let _ = tokio::task::spawn_blocking(move || cache.close()).await;
        }
    }

    /// Lists (when needed) and watches until the connection is lost or the server stops.
    async fn follow(
        &mut self,
        registry: &Registry,
        shutdown: &CancellationToken,
        connected: &mut bool,
    ) -> Stop {
        if let Some((user, password)) = self.parts.user.clone() {
            let mut client = self.parts.client.clone();
            match tokio::time::timeout(REQUEST_TIMEOUT, client.update_user(Some((user, password))))
                .await
            {
                Ok(Ok(())) => self.parts.user = None,
                Ok(Err(e)) => return Stop::Lost(format!("authentication: {e}")),
                Err(_) => return Stop::Lost("authentication: no answer".into()),
            }
        }
        let start = match self.parts.resume_from {
            Some(revision) => revision,
            None => match list(&self.parts.client, &self.parts.instances_prefix).await {
                Ok((revision, listed)) => {
                    self.apply_listing(registry, revision, listed);
                    self.parts.resume_from = Some(revision);
                    revision
                }
                Err(error) => return Stop::Lost(error),
            },
        };
        let mut watch_client = self
            .parts
            .client
            .watch_client()
            .max_decoding_message_size(64 << 20);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start + 1);
        let mut stream = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            watch_client.watch(self.parts.instances_prefix.clone(), Some(options)),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Stop::Lost(e.to_string()),
            Err(_) => return Stop::Lost(format!("no answer within {REQUEST_TIMEOUT:?}")),
        };
        if !*connected {
            tracing::info!(
                endpoints = %self.parts.endpoints, revision = start,
                "etcd connection restored: following the registry"
            );
            *connected = true;
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Stop::Shutdown,
                Some(key) = self.parts.redo.recv() => self.apply_mirrored(registry, key),
                message = stream.message() => match message {
                    Ok(Some(response)) => {
                        if response.canceled() {
                            if response.compact_revision() > 0 {
                                // Missed changes are gone from etcd's history: list again.
                                self.parts.resume_from = None;
                            }
                            return Stop::Lost(format!(
                                "watch canceled by etcd: {}",
                                response.cancel_reason()
                            ));
                        }
                        let events: Vec<_> = response
                            .events()
                            .iter()
                            .filter_map(|event| {
                                let kv = event.kv()?;
                                let key = parse_key(&self.parts.instances_prefix, kv.key())?;
                                let value = match event.event_type() {
                                    EventType::Put => {
                                        match parse_instance(&self.parts.instances_prefix, kv) {
                                            Ok((_, instance)) => Some(instance),
                                            Err(problem) => {
                                                tracing::warn!(%problem, "skipping a value in etcd");
                                                return None;
                                            }
                                        }
                                    }
                                    EventType::Delete => None,
                                };
                                Some((key, kv.mod_revision(), value))
                            })
                            .collect();
                        if let Some(last) = events.iter().map(|(_, revision, _)| *revision).max() {
                            self.parts.resume_from =
                                Some(self.parts.resume_from.unwrap_or(0).max(last));
                        }
                        self.apply_events(registry, events);
                    }
                    Ok(None) => return Stop::Lost("the watch stream ended".into()),
                    Err(e) => return Stop::Lost(e.to_string()),
                },
            }
        }
    }

    /// A complete listing: the mirror becomes it, the registry follows (instances it does not
    /// list are removed), the cache is brought up to date.
    fn apply_listing(
        &mut self,
        registry: &Registry,
        revision: i64,
        listed: Vec<(Key, i64, StoredInstance)>,
    ) {
        let cache_changes = lock(&self.parts.shared).replace_with_listing(revision, &listed);
        let revisions: HashMap<Key, i64> = listed
            .iter()
            .map(|(key, modified, _)| (key.clone(), *modified))
            .collect();
        let changes: Vec<Change> = listed
            .into_iter()
            .map(|(_, _, instance)| Change::Put(Box::new(instance)))
            .collect();
        let shared = Arc::clone(&self.parts.shared);
        registry.apply_remote(changes, true, &mut |service, id| {
            let key = (service.clone(), id.clone());
            let at = revisions.get(&key).copied().unwrap_or(revision);
            lock(&shared).accept(&key, at)
        });
        self.update_cache(revision, cache_changes);
    }

    /// Changes from one watch response, in revision order.
    fn apply_events(
        &mut self,
        registry: &Registry,
        events: Vec<(Key, i64, Option<StoredInstance>)>,
    ) {
        if events.is_empty() {
            return;
        }
        // Only the last change of each instance counts (a response may carry several).
        let mut last: HashMap<Key, usize> = HashMap::new();
        for (i, (key, _, _)) in events.iter().enumerate() {
            last.insert(key.clone(), i);
        }
        let mut revisions: HashMap<Key, i64> = HashMap::new();
        let mut changes = Vec::with_capacity(last.len());
        let mut newest = 0;
        {
            let mut shared = lock(&self.parts.shared);
            for (i, (key, revision, value)) in events.into_iter().enumerate() {
                newest = newest.max(revision);
                shared.observe(key.clone(), revision, value.clone());
                if last.get(&key) != Some(&i) {
                    continue;
                }
                revisions.insert(key.clone(), revision);
                changes.push(to_change(key, value));
            }
        }
        let shared = Arc::clone(&self.parts.shared);
        registry.apply_remote(changes.clone(), false, &mut |service, id| {
            let key = (service.clone(), id.clone());
            let at = revisions.get(&key).copied().unwrap_or(i64::MAX);
            lock(&shared).accept(&key, at)
        });
        self.update_cache(newest, changes);
    }

    /// A change held back while this server's own write was in flight: applies the mirror's
    /// state of the instance, if it is newer than that write.
    fn apply_mirrored(&mut self, registry: &Registry, key: Key) {
        let Some(mirrored) = lock(&self.parts.shared).mirrored(&key).cloned() else {
            return;
        };
        let shared = Arc::clone(&self.parts.shared);
        let change = to_change(key, mirrored.instance);
        registry.apply_remote(vec![change], false, &mut |service, id| {
            lock(&shared).accept(&(service.clone(), id.clone()), mirrored.revision)
        });
    }

    fn update_cache(&self, revision: i64, changes: Vec<Change>) {
        if let Some(cache) = &self.parts.cache {
            let index = u64::try_from(revision).unwrap_or(0);
            for change in changes {
                cache.submit_detached(index, change);
            }
        }
    }
}

fn to_change(key: Key, value: Option<StoredInstance>) -> Change {
    match value {
        Some(instance) => Change::Put(Box::new(instance)),
        None => {
            let (service, id): (ServiceName, InstanceId) = key;
            Change::Delete { service, id }
        }
    }
}
