//! Leader election: exactly one server of a cluster runs the active health checks and TTL
//! expiry at a time, so each instance is probed once per interval, not once per server.
//!
//! A lease-based lock on the key `<prefix>leader`: a server that sees the key absent grants
//! itself a lease of `--etcd-lease-ttl` and creates the key attached to it in a transaction
//! that succeeds only if the key still does not exist (`create_revision == 0`). The winner
//! renews its lease every third of the TTL and runs the health work; the others watch the key
//! and campaign again when it disappears.
//!
//! **Handover bound.** When the leader dies or loses etcd, its lease is no longer renewed and
//! etcd deletes the key at most one lease TTL after the last renewal; the watchers see the
//! deletion at once and one of them wins. So checks resume within the lease TTL (default 5 s)
//! plus one round trip, and the new leader probes every instance at once. A leader that stops
//! cleanly revokes its lease: the handover is immediate.
//!
//! **Never two leaders.** A leader counts its lease as valid until the instant it sent its last
//! successful renewal plus the TTL etcd granted — etcd's own expiry is later than that — and
//! stops its health work as soon as that instant passes without a renewal, before any other
//! server can win the key.

use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, WatchOptions,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::REQUEST_TIMEOUT;

/// A held leadership: the lease and until when it is surely valid.
struct Lease {
    id: i64,
    valid_until: Instant,
}

/// Campaigns for leadership until `shutdown`; while this server leads, runs `work` with a
/// token that is cancelled when leadership ends. `identity` is written to the leader key for
/// operators (`etcdctl get <prefix>leader`).
pub async fn run<W, F>(
    client: Client,
    prefix: String,
    lease_ttl: Duration,
    identity: String,
    work: W,
    shutdown: CancellationToken,
) where
    W: Fn(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let key = format!("{prefix}leader");
    let mut backoff = Duration::from_millis(100);
    loop {
        match campaign(&client, &key, lease_ttl, &identity, &shutdown).await {
            Ok(Some(lease)) => {
                backoff = Duration::from_millis(100);
                lead(&client, lease, lease_ttl, &work, &shutdown).await;
            }
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%error, "leader election: etcd unreachable, retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
        if shutdown.is_cancelled() {
            return;
        }
    }
}

async fn timed<T>(
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Waits until the leader key is free and takes it. `Ok(None)`: shutdown.
async fn campaign(
    client: &Client,
    key: &str,
    lease_ttl: Duration,
    identity: &str,
    shutdown: &CancellationToken,
) -> Result<Option<Lease>, String> {
    let mut kv = client.kv_client();
    let mut leases = client.lease_client();
    loop {
        if shutdown.is_cancelled() {
            return Ok(None);
        }
        let current = timed("read the leader key", kv.get(key, None)).await?;
        if !current.kvs().is_empty() {
            let revision = current.header().map_or(0, |h| h.revision());
            if !wait_for_deletion(client, key, revision, shutdown).await? {
                return Ok(None);
            }
            continue;
        }
        let sent = Instant::now();
        let granted = timed(
            "grant a lease",
            leases.grant(lease_ttl.as_secs().max(1) as i64, None),
        )
        .await?;
        let id = granted.id();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key,
                identity,
                Some(PutOptions::new().with_lease(id)),
            )]);
        match timed("take the leader key", kv.txn(txn)).await {
            Ok(response) if response.succeeded() => {
                return Ok(Some(Lease {
                    id,
                    valid_until: sent + Duration::from_secs(granted.ttl().max(0) as u64),
                }));
            }
            outcome => {
                // Another server won, or the answer was lost: give the lease back either way
                // (if the key was ours after all, revoking deletes it and we campaign again).
                let _ = timed("revoke a lease", leases.revoke(id)).await;
                outcome?;
            }
        }
    }
}

/// Watches the leader key from `revision` until it is deleted. `Ok(false)`: shutdown.
async fn wait_for_deletion(
    client: &Client,
    key: &str,
    revision: i64,
    shutdown: &CancellationToken,
) -> Result<bool, String> {
    let mut watch = client.watch_client();
    let options = WatchOptions::new().with_start_revision(revision + 1);
    let mut stream = timed("watch the leader key", watch.watch(key, Some(options))).await?;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(false),
            message = stream.message() => match message {
                Ok(Some(response)) => {
                    if response.canceled() {
                        return Ok(true);
                    }
                    if response.events().iter().any(|e| e.event_type() == EventType::Delete) {
                        return Ok(true);
                    }
                }
                Ok(None) => return Err("the leader watch ended".into()),
                Err(e) => return Err(format!("the leader watch failed: {e}")),
            },
        }
    }
}

/// Leads: runs the work and renews the lease until the lease cannot be renewed in time or the
/// server stops.
async fn lead<W, F>(
    client: &Client,
    lease: Lease,
    lease_ttl: Duration,
    work: &W,
    shutdown: &CancellationToken,
) where
    W: Fn(CancellationToken) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    tracing::info!(
        lease = lease.id, lease_ttl = %humantime::format_duration(lease_ttl),
        "cluster leadership gained: this server runs the active health checks and TTL expiry"
    );
    let token = shutdown.child_token();
    // The health work runs in its own task so that renewals never delay probes; it is owned
    // here and awaited before leadership is given up.
    let health = tokio::spawn(work(token.clone()));
    let renew_every = lease_ttl / 3;
    let mut valid_until = lease.valid_until;
    let mut keep_alive: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    let reason = loop {
        if Instant::now() >= valid_until {
            break "the lease could not be renewed in time (etcd unreachable)";
        }
        tokio::select! {
            _ = shutdown.cancelled() => break "shutdown",
            _ = tokio::time::sleep(renew_every.min(valid_until - Instant::now())) => {}
        }
        let sent = Instant::now();
        let budget = valid_until.saturating_duration_since(sent);
        let renewed = tokio::select! {
            _ = shutdown.cancelled() => break "shutdown",
            renewed = tokio::time::timeout(budget, renew(client, lease.id, &mut keep_alive)) => renewed,
        };
        match renewed {
            Ok(Ok(ttl)) if ttl > 0 => valid_until = sent + Duration::from_secs(ttl as u64),
            Ok(Ok(_)) => break "the lease expired",
            Ok(Err(error)) => {
                tracing::debug!(%error, "lease renewal failed; retrying");
                keep_alive = None;
            }
            Err(_) => keep_alive = None,
        }
    };
    token.cancel();
    let _ = health.await;
    // Give the key up at once (a clean stop hands over without waiting for the TTL); after an
    // expiry this fails harmlessly.
    let mut leases = client.lease_client();
    let _ = tokio::time::timeout(Duration::from_secs(1), leases.revoke(lease.id)).await;
    tracing::info!(
        lease = lease.id,
        reason,
        "cluster leadership lost: active health checks and TTL expiry stopped on this server"
    );
}

/// One renewal; returns the TTL etcd granted (0: the lease is gone).
async fn renew(
    client: &Client,
    id: i64,
    keep_alive: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<i64, String> {
    if keep_alive.is_none() {
        let mut leases = client.lease_client();
        *keep_alive = Some(
            leases
                .keep_alive(id)
                .await
                .map_err(|e| format!("open the keep-alive stream: {e}"))?,
        );
    }
    let Some((keeper, stream)) = keep_alive.as_mut() else {
        return Err("no keep-alive stream".into());
    };
    keeper
        .keep_alive()
        .await
        .map_err(|e| format!("send a keep-alive: {e}"))?;
    match stream.message().await {
        Ok(Some(response)) => Ok(response.ttl()),
        Ok(None) => Err("the keep-alive stream ended".into()),
        Err(e) => Err(format!("keep-alive: {e}")),
    }
}
