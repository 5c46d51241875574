//! Clusters: several srvdns servers sharing one registry through etcd (cargo feature `etcd`,
//! `--store etcd`). See docs/cluster.md for operators.
//!
//! Each server keeps its own [`Registry`](crate::registry::Registry) and answers DNS from its
//! own in-memory snapshot; etcd is the shared source of truth. The parts:
//!
//! - [`store`]: the [`Store`](crate::store::Store) the registry writes through. A batch of
//!   changes becomes one etcd transaction, and a change is acknowledged only once etcd
//!   committed it. It also holds the *mirror*: etcd's registry as this server last saw it,
//!   which a failed write reverts to and which a restart serves while etcd is down (it is kept
//!   in `<data-dir>/etcd-cache.redb`).
//! - [`follow`]: the watch task. It lists the registry once, then follows etcd's watch from
//!   that revision, applying other servers' changes with
//!   [`Registry::apply_remote`](crate::registry::Registry::apply_remote) (never writing them
//!   back). When etcd is unreachable it keeps retrying, and resumes from the last revision it
//!   saw (or lists again when that revision was compacted).
//! - [`leader`]: one server at a time runs the active health checks and TTL expiry: the one
//!   whose lease holds the `<prefix>leader` key. When it dies, its lease expires within the
//!   lease TTL and another server takes over.
//!
//! Keys, under the prefix (default `/srvdns/`): `instances/<service>/<id>` holds one instance
//! as JSON (the same [`StoredInstance`](crate::store::StoredInstance) the embedded store
//! keeps), `leader` names the server running the health checks.
//!
//! Nothing here is on the DNS path: queries read the registry's snapshot and never wait for
//! etcd.

pub mod follow;
pub mod leader;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions, KeyValue};

use crate::config::EtcdConfig;
use crate::registry::model::{InstanceId, ServiceName};
use crate::store::commit::Committer;
use crate::store::embedded::EmbeddedStore;
use crate::store::{Store, StoreError, StoredInstance};
use store::{EtcdStore, Key, Shared};

/// The file in the data directory that keeps the last registry seen in etcd.
pub const CACHE_FILE: &str = "etcd-cache.redb";

/// How long one etcd request (a read, a write, a lease call) may take before it counts as
/// failed. Writes that time out answer 503.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Listings are read in pages of this many keys, all at one revision.
const PAGE: i64 = 1000;

/// Why the cluster store cannot start. (etcd being unreachable is not one: the server starts
/// on its last snapshot and catches up later.)
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot read the etcd {what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot set up the etcd client for {endpoints}: {detail}")]
    Client { endpoints: String, detail: String },
    #[error(transparent)]
    Cache(#[from] StoreError),
}

/// A key of the registry: `<prefix>instances/<service>/<id>`.
pub(crate) fn instance_key(instances_prefix: &str, service: &str, id: &str) -> String {
    format!("{instances_prefix}{service}/{id}")
}

/// The instance a key names, if it is one of ours.
pub(crate) fn parse_key(instances_prefix: &str, key: &[u8]) -> Option<Key> {
    let key = std::str::from_utf8(key).ok()?;
    let rest = key.strip_prefix(instances_prefix)?;
    let (service, id) = rest.split_once('/')?;
    Some((
        ServiceName::try_from(service).ok()?,
        InstanceId::try_from(id).ok()?,
    ))
}

/// An instance from a key-value pair, or why it cannot be read (logged and skipped: one bad
/// value must not stop a server from following the rest).
pub(crate) fn parse_instance(
    instances_prefix: &str,
    kv: &KeyValue,
) -> Result<(Key, StoredInstance), String> {
    let key = parse_key(instances_prefix, kv.key()).ok_or_else(|| {
        format!(
            "key {:?} does not name an instance",
            String::from_utf8_lossy(kv.key())
        )
    })?;
    let instance: StoredInstance = serde_json::from_slice(kv.value()).map_err(|e| {
        format!(
            "key {:?} holds no valid instance: {e}",
            String::from_utf8_lossy(kv.key())
        )
    })?;
    let named = (
        instance.registration.service.clone(),
        instance.registration.id.clone(),
    );
    if named != key {
        return Err(format!(
            "key {:?} holds instance {}/{}",
            String::from_utf8_lossy(kv.key()),
            named.0,
            named.1
        ));
    }
    Ok((key, instance))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, ClusterError> {
    std::fs::read(path).map_err(|source| ClusterError::File {
        what,
        path: path.to_owned(),
        source,
    })
}

/// The client options: TLS and credentials from the configuration, and HTTP/2 keep-alives so
/// that a dead connection is noticed within seconds even while a watch is idle.
fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, ClusterError> {
    let mut options = ConnectOptions::new()
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true)
        .with_connect_timeout(Duration::from_secs(2))
        .with_require_leader(true)
        .with_auto_token_refresh(true);
    if config.endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &config.ca_file {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read_file(
                "CA certificate",
                ca,
            )?));
        }
        if let Some((cert, key)) = &config.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(
                read_file("client certificate", cert)?,
                read_file("client key", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

/// Connects to etcd. The connection itself is lazy: this succeeds while etcd is down, unless
/// credentials are configured and etcd is up but refuses them.
async fn connect(config: &EtcdConfig) -> Result<(Client, bool), ClusterError> {
    let endpoints = config.endpoints.join(",");
    let client_error = |e: etcd_client::Error| ClusterError::Client {
        endpoints: endpoints.clone(),
        detail: e.to_string(),
    };
    let options = connect_options(config)?;
    if let Some((user, password)) = &config.user {
        let with_user = options.clone().with_user(user.clone(), password.clone());
        match tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect(&config.endpoints, Some(with_user)),
        )
        .await
        {
            Ok(Ok(client)) => return Ok((client, true)),
            // etcd answered, and said no ("authentication failed, invalid user ID or
            // password"): a configuration error, reported at start.
            Ok(Err(e)) if e.to_string().contains("authentication failed") => {
                return Err(ClusterError::Client {
                    endpoints,
                    detail: format!("etcd refused the credentials of --etcd-user: {e}"),
                });
            }
            // Unreachable: connect without credentials now, authenticate once etcd answers.
            _ => {}
        }
    }
    let client = Client::connect(&config.endpoints, Some(options))
        .await
        .map_err(client_error)?;
    Ok((client, config.user.is_none()))
}

/// Reads every instance under the prefix, in pages, all at one revision. Returns that
/// revision and the instances (unreadable values are logged and left out).
pub(crate) async fn list(
    client: &Client,
    instances_prefix: &str,
) -> Result<(i64, Vec<(Key, i64, StoredInstance)>), String> {
    let mut kv = client.kv_client().max_decoding_message_size(64 << 20);
    let end = prefix_end(instances_prefix);
    let mut from = instances_prefix.as_bytes().to_vec();
    let mut revision = 0;
    let mut listed = Vec::new();
    loop {
        let mut options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let response = tokio::time::timeout(REQUEST_TIMEOUT, kv.get(from.clone(), Some(options)))
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        if revision == 0 {
            revision = response.header().map_or(0, |h| h.revision());
        }
        for pair in response.kvs() {
            match parse_instance(instances_prefix, pair) {
                Ok((key, instance)) => listed.push((key, pair.mod_revision(), instance)),
                Err(problem) => tracing::warn!(%problem, "skipping a value in etcd"),
            }
        }
        match response.kvs().last() {
            Some(last) if response.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => break,
        }
    }
    Ok((revision, listed))
}

/// The end of the key range of a prefix (the prefix with its last byte incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// What [`start`] returns: the store for the registry, the watch task to run beside it, and a
/// client for the leader election.
pub struct Started {
    pub store: Arc<EtcdStore>,
    pub follower: follow::Follower,
    pub client: Client,
}

/// Connects to etcd and prepares the cluster store: the mirror starts from the local cache in
/// `data_dir` (if any), and then from a first listing of etcd if etcd answers in time — so a
/// server that can reach etcd starts with the cluster's registry, and one that cannot starts
/// with the last registry it saw.
pub async fn start(config: &EtcdConfig, data_dir: Option<&Path>) -> Result<Started, ClusterError> {
    let (client, authenticated) = connect(config).await?;
    let instances_prefix = format!("{}instances/", config.prefix);
    let mut shared = Shared::default();
    let cache = match data_dir {
        Some(dir) => {
            let cache = EmbeddedStore::open_file(dir, CACHE_FILE)?;
            shared.restore_cache(cache.load()?);
            let cache: Arc<dyn Store> = Arc::new(cache);
            let committer = Committer::start(
                cache,
                Box::new(|_store, fail_queued| {
                    fail_queued();
                    tracing::error!(
                        "cannot update the local copy of the etcd registry; a restart while \
                         etcd is down may serve an older registry"
                    );
                }),
            )
            .map_err(|e| StoreError::Open {
                file: dir.join(CACHE_FILE),
                detail: e.to_string(),
            })?;
            Some(committer)
        }
        None => None,
    };
    let endpoints = config.endpoints.join(",");
    let mut resume_from = None;
    if authenticated {
        match list(&client, &instances_prefix).await {
            Ok((revision, listed)) => {
                let cache_changes = shared.replace_with_listing(revision, &listed);
                if let Some(cache) = &cache {
                    for change in cache_changes {
                        cache.submit_detached(revision.max(0) as u64, change);
                    }
                }
                resume_from = Some(revision);
                tracing::info!(
                    endpoints = %endpoints, revision, instances = listed.len(),
                    "etcd connected: registry loaded"
                );
            }
            Err(error) => tracing::warn!(
                endpoints = %endpoints, %error,
                cache = %data_dir.map(|d| d.join(CACHE_FILE).display().to_string())
                    .unwrap_or_else(|| "none (--data-dir none)".into()),
                "etcd unreachable at start: serving the last registry seen until it answers"
            ),
        }
    }
    let shared = Arc::new(Mutex::new(shared));
    let (redo_tx, redo_rx) = tokio::sync::mpsc::unbounded_channel();
    let store = Arc::new(EtcdStore::new(
        client.clone(),
        tokio::runtime::Handle::current(),
        instances_prefix.clone(),
        endpoints.clone(),
        Arc::clone(&shared),
        redo_tx,
    ));
    let follower = follow::Follower::new(follow::FollowerParts {
        client: client.clone(),
        instances_prefix,
        endpoints,
        shared,
        redo: redo_rx,
        cache,
        resume_from,
        user: if authenticated {
            None
        } else {
            config.user.clone()
        },
    });
    Ok(Started {
        store,
        follower,
        client,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_instances_under_the_prefix() {
        let key = instance_key("/srvdns/instances/", "web", "host:c1:80");
        assert_eq!(key, "/srvdns/instances/web/host:c1:80");
        let (service, id) = parse_key("/srvdns/instances/", key.as_bytes()).unwrap();
        assert_eq!((service.as_str(), id.as_str()), ("web", "host:c1:80"));
        assert!(parse_key("/srvdns/instances/", b"/srvdns/leader").is_none());
        assert!(parse_key("/srvdns/instances/", b"/srvdns/instances/Bad Name/x").is_none());
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
    }
}
