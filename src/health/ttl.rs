//! The TTL task: sleeps until the earliest TTL or `deregister_after` deadline, then lets the
//! registry apply the passage of time. The registry wakes it early when a registration brings
//! an earlier deadline, so the task never polls.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// Runs until `shutdown`.
pub async fn run(registry: Arc<Registry>, shutdown: CancellationToken) {
    loop {
        let next = registry.expire_due();
        let sleep = async {
            match next {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sleep => {}
            _ = registry.deadline_moved() => {}
        }
    }
}
