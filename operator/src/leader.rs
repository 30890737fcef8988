//! Leader election on a `coordination.k8s.io/v1` Lease (through `kube-lease-manager`).
//!
//! Every replica runs its controllers' watches; only the replica whose [`LeaderState`] says so
//! reconciles and writes. Leadership is lost — and writing stops at once — when the Lease is taken
//! by another replica or when this replica cannot reach the API server to renew it (a request that
//! errors or outlives the renew interval steps the replica down before its Lease can expire).
//! On shutdown the Lease is released so a follower can take over without waiting for it to expire.

use std::{future::Future, time::Duration};

use futures::{Stream, StreamExt};
use kube::Client;
use kube_lease_manager::{LeaseCreateMode, LeaseManager, LeaseManagerBuilder};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::health::ReadyHandle;

/// Whether this replica is the leader; cheap to clone, shared by every controller.
#[derive(Clone, Debug)]
pub struct LeaderState {
    rx: watch::Receiver<bool>,
}

/// The writing side of a [`LeaderState`].
#[derive(Debug)]
pub struct LeaderSender {
    tx: watch::Sender<bool>,
}

/// A new leadership channel, starting as "not leader".
pub fn channel() -> (LeaderSender, LeaderState) {
    let (tx, rx) = watch::channel(false);
    (LeaderSender { tx }, LeaderState { rx })
}

impl LeaderSender {
    /// Publish whether this replica leads; only a change wakes the watchers.
    pub fn set(&self, leader: bool) {
        self.tx.send_if_modified(|current| {
            let changed = *current != leader;
            *current = leader;
            changed
        });
    }
}

impl LeaderState {
    /// A state that never changes (a standalone process or a test).
    pub fn fixed(leader: bool) -> Self {
        let (tx, rx) = watch::channel(leader);
        // The receiver keeps reporting the last value after the sender is gone.
        drop(tx);
        Self { rx }
    }

    /// Whether this replica leads right now. Check it immediately before every write.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolve once this replica leads (at once if it does). Returns `false` if leadership can
    /// never come (the election stopped).
    pub async fn wait_until_leader(&self) -> bool {
        let mut rx = self.rx.clone();
        rx.wait_for(|leader| *leader).await.is_ok()
    }

    /// Resolve once this replica no longer leads (at once if it does not).
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            // An error means the election stopped, which also ends leadership.
            let _ = rx.wait_for(|leader| !*leader).await;
        }
    }

    /// A stream yielding once each time this replica becomes the leader: give it to
    /// `Controller::reconcile_all_on` so a new leader reconciles every object it has cached.
    pub fn acquisitions(&self) -> impl Stream<Item = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        rx.mark_unchanged();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                rx.changed().await.ok()?;
                if *rx.borrow_and_update() {
                    return Some(((), rx));
                }
            }
        })
        .boxed()
    }
}

/// Where the leader Lease lives and how it is timed.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity in the Lease's `holderIdentity`.
    pub identity: String,
    /// `leaseDurationSeconds`: how long the Lease stays valid after a renewal.
    pub duration: Duration,
    /// How often the leader renews; shorter than `duration`.
    pub renew: Duration,
}

impl LeaseConfig {
    async fn manager(
        &self,
        client: Client,
    ) -> Result<LeaseManager, kube_lease_manager::LeaseManagerError> {
        let duration = self.duration.as_secs().max(2);
        let renew = self.renew.as_secs().clamp(1, duration - 1);
        LeaseManagerBuilder::new(client, &self.name)
            .with_namespace(&self.namespace)
            .with_create_mode(LeaseCreateMode::AutoCreate)
            .with_identity(&self.identity)
            .with_field_manager(format!("overseer-leader-election/{}", self.identity))
            // The manager renews `grace` seconds before the Lease expires.
            .with_grace(duration - renew)
            .with_duration(duration)
            .build()
            .await
    }
}

/// Run the election until `stop` is cancelled, publishing leadership through `sender`.
///
/// `client` should time out its requests within [`LeaseConfig::renew`], so that a hung renewal
/// steps this replica down before the Lease can expire. `api` reports whether the last request
/// reached the API server. On stop the Lease is released if this replica holds it.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    sender: LeaderSender,
    gauge: Gauge,
    api: ReadyHandle,
    stop: CancellationToken,
) {
    let publish = |leader: bool| {
        sender.set(leader);
        gauge.set(i64::from(leader));
    };
    info!(lease = %config.name, namespace = %config.namespace, identity = %config.identity, "starting leader election");
    loop {
        let manager = tokio::select! {
            () = stop.cancelled() => break,
            built = config.manager(client.clone()) => built,
        };
        let manager = match manager {
            Ok(manager) => manager,
            Err(e) => {
                api.set(false);
                warn!(error = %e, "cannot read or create the leader Lease; retrying");
                if sleep_or_stop(config.renew, &stop).await {
                    break;
                }
                continue;
            }
        };
        api.set(true);
        loop {
            let changed = tokio::select! {
                () = stop.cancelled() => {
                    publish(false);
                    match tokio::time::timeout(config.renew, manager.release()).await {
                        Ok(Ok(())) => info!("released the leader Lease"),
                        Ok(Err(e)) => warn!(error = %e, "cannot release the leader Lease; it expires on its own"),
                        Err(_) => warn!("releasing the leader Lease timed out; it expires on its own"),
                    }
                    return;
                }
                changed = manager.changed() => changed,
            };
            match changed {
                Ok(leader) => {
                    api.set(true);
                    if leader {
                        info!(identity = %config.identity, "became the leader: controllers may write");
                    } else {
                        info!(identity = %config.identity, "lost leadership: writes stop");
                    }
                    publish(leader);
                }
                Err(e) => {
                    // Step down before the Lease could expire under us; start over with a fresh
                    // manager so its idea of who holds the Lease is re-read from the API server.
                    api.set(false);
                    if sender.tx.borrow().to_owned() {
                        warn!(error = %e, "cannot renew the leader Lease: stepping down");
                    } else {
                        warn!(error = %e, "leader election request failed; retrying");
                    }
                    publish(false);
                    break;
                }
            }
        }
        if sleep_or_stop(config.renew, &stop).await {
            break;
        }
    }
    publish(false);
}

/// Sleep for `duration`; returns `true` when `stop` fired first.
async fn sleep_or_stop(duration: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => true,
        () = tokio::time::sleep(duration) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;

    #[tokio::test]
    async fn state_follows_the_sender() {
        let (sender, state) = channel();
        assert!(!state.is_leader());
        let mut acquisitions = pin!(state.acquisitions());

        sender.set(true);
        assert!(state.is_leader());
        tokio::time::timeout(Duration::from_secs(1), state.wait_until_leader())
            .await
            .expect("already leader");
        tokio::time::timeout(Duration::from_secs(1), acquisitions.next())
            .await
            .expect("acquisition reported")
            .expect("stream open");

        let lost = state.lost();
        sender.set(false);
        tokio::time::timeout(Duration::from_secs(1), lost)
            .await
            .expect("loss reported");
        assert!(!state.is_leader());

        // Losing leadership is not an acquisition; the next gain is.
        sender.set(true);
        tokio::time::timeout(Duration::from_secs(1), acquisitions.next())
            .await
            .expect("second acquisition reported")
            .expect("stream open");
    }

    #[tokio::test]
    async fn a_stopped_election_never_leads() {
        let (sender, state) = channel();
        drop(sender);
        assert!(!state.wait_until_leader().await);
        tokio::time::timeout(Duration::from_secs(1), state.lost())
            .await
            .expect("not leader");
    }

    #[test]
    fn fixed_state_keeps_its_value() {
        assert!(LeaderState::fixed(true).is_leader());
        assert!(!LeaderState::fixed(false).is_leader());
    }
}
