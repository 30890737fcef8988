//! Rate limits and budgets: native, atomic, tenant-isolated counters kept outside Cedar.
//!
//! # Model
//!
//! Every counter is named by a [`CounterKey`]: the policy (its uid or `namespace/name`), the limit's
//! name, whether it is a rate limit or a budget (and the budget's metric), and a structured
//! [`Subject`] — the agent, the agent and tool, the user, the tenant or the session the counter is
//! kept for. Two tenants therefore never share a counter: a `Tenant` subject of one tenant is a
//! different key from another's, so one tenant can never exhaust another's limit.
//!
//! A decision hands [`LimitState::check_and_charge`] the [`Charge`]s that apply to the call. The
//! call is all-or-nothing: either every counter is charged, or (when any one would go over its
//! limit) none is and the first offending charge is reported as [`Exceeded`]. The shards holding
//! the counters involved are locked in ascending shard order, so concurrent calls never deadlock
//! and no other call sees a half-charged state. Calls that will not be allowed for another reason
//! use [`LimitState::check`], which never charges: a call counts only when it is allowed.
//!
//! # Windows
//!
//! A counter with a window uses a *fixed window that opens at the first counted call* of its key:
//! the window starts when the first charge lands, and once `window` has elapsed the next counted
//! call opens a fresh window starting at zero. A budget without a window never resets (a lifetime
//! budget; with a `Session` subject, a per-session budget).
//!
//! A call is over a limit when the counter is already exhausted (`used >= limit`) or when its
//! amount does not fit in what remains (`used + amount > limit`). A rate limit charges 1 per call,
//! so exactly `limit` calls are allowed per window.
//!
//! # Reserve → commit
//!
//! Token and cost budgets are charged with the caller's *estimate* when the call is decided;
//! [`check_and_charge`](LimitState::check_and_charge) returns a [`Reservation`] whose id the caller
//! later hands to [`LimitState::commit`] with the actual usage, which replaces the estimate. A
//! reservation commits once: a second commit is rejected with [`CommitError::AlreadyCommitted`].
//! A reservation that is never committed stays charged at its estimate — the conservative choice:
//! an agent cannot dodge its budget by never reporting usage. Reservations are kept in memory for
//! [`LimitsConfig::reservation_ttl`] (and at most [`LimitsConfig::max_reservations`] of them, the
//! oldest going first), after which a commit answers [`CommitError::Unknown`] and the estimate
//! stands. If the counter's window has rolled over between the reservation and the commit, the
//! commit leaves the new window alone (the estimate was charged to the window that ended).
//!
//! # Persistence
//!
//! [`LimitState::snapshot`] and [`LimitState::persist`] write a versioned JSON document atomically
//! (temporary file, fsync, rename, fsync of the directory); [`LimitState::load`] restores it,
//! expiring windows that ended while the service was down, and reports a corrupt file as a
//! [`PersistError`], never a panic. A [`Persister`] writes the state every interval (1 s by
//! default). **Crash-loss bound:** a crash loses at most the charges and commits made since the
//! last successful write began — one persist interval plus the time one write takes. After a
//! restart counters can therefore under-count by at most that, and never over-count.
//!
//! The counters of one process are not shared with other replicas: each replica enforces its limits
//! on the calls it decides.

mod persist;

pub use persist::{LimitSnapshot, PersistError, Persister, SNAPSHOT_VERSION};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The metric a budget counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BudgetMetric {
    /// LLM tokens; charged with an estimate and adjusted by [`LimitState::commit`].
    Tokens,
    /// Cost in integer micro-USD; charged with an estimate and adjusted by [`LimitState::commit`].
    CostMicroUsd,
    /// Allowed tool calls; every charged call counts one and needs no commit.
    ToolCalls,
}

impl BudgetMetric {
    /// Whether a commit replaces the charged estimate for this metric.
    pub fn is_committed(self) -> bool {
        matches!(self, Self::Tokens | Self::CostMicroUsd)
    }

    fn unit(self) -> &'static str {
        match self {
            Self::Tokens => "tokens",
            Self::CostMicroUsd => "micro-USD",
            Self::ToolCalls => "tool calls",
        }
    }
}

/// Whether a counter belongs to a rate limit or a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LimitKind {
    /// A rate limit: calls per fixed window.
    RateLimit,
    /// A budget over the given metric.
    Budget(BudgetMetric),
}

/// The kind of [`Subject`] a counter is kept for (what a limit's `key` names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum KeyKind {
    /// One counter per agent.
    Agent,
    /// One counter per agent and tool.
    AgentTool,
    /// One counter per end user.
    User,
    /// One counter per tenant.
    Tenant,
    /// One counter per agent session.
    Session,
}

/// Whom one counter is kept for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Subject {
    /// An agent (its principal id).
    Agent(Box<str>),
    /// An agent calling one tool.
    AgentTool {
        /// The agent's principal id.
        agent: Box<str>,
        /// The tool name.
        tool: Box<str>,
    },
    /// An end user on whose behalf the agent acts.
    User(Box<str>),
    /// A tenant.
    Tenant(Box<str>),
    /// An agent session.
    Session(Box<str>),
}

impl Subject {
    /// The kind of this subject.
    pub fn kind(&self) -> KeyKind {
        match self {
            Self::Agent(_) => KeyKind::Agent,
            Self::AgentTool { .. } => KeyKind::AgentTool,
            Self::User(_) => KeyKind::User,
            Self::Tenant(_) => KeyKind::Tenant,
            Self::Session(_) => KeyKind::Session,
        }
    }

    /// A per agent+tool subject.
    pub fn agent_tool(agent: &str, tool: &str) -> Self {
        Self::AgentTool {
            agent: agent.into(),
            tool: tool.into(),
        }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Agent(a) => write!(f, "agent {a:?}"),
            Self::AgentTool { agent, tool } => write!(f, "agent {agent:?} calling tool {tool:?}"),
            Self::User(u) => write!(f, "user {u:?}"),
            Self::Tenant(t) => write!(f, "tenant {t:?}"),
            Self::Session(s) => write!(f, "session {s:?}"),
        }
    }
}

/// The full, structured name of one counter.
///
/// `policy` and `limit` are `Arc<str>` so that a compiled policy can hand out its names without
/// allocating per request; only the [`Subject`] is built per call.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CounterKey {
    /// The policy the limit belongs to (its uid, or `namespace/name`): counters survive a policy
    /// update as long as this stays the same.
    pub policy: Arc<str>,
    /// The name of the rate limit or budget within the policy.
    pub limit: Arc<str>,
    /// Rate limit or budget (and metric); a rate limit and a budget of the same name never share
    /// a counter.
    pub kind: LimitKind,
    /// Whom the counter is kept for.
    pub subject: Subject,
}

impl CounterKey {
    /// The key of a rate limit's counter.
    pub fn rate_limit(policy: Arc<str>, limit: Arc<str>, subject: Subject) -> Self {
        Self {
            policy,
            limit,
            kind: LimitKind::RateLimit,
            subject,
        }
    }

    /// The key of a budget's counter.
    pub fn budget(
        policy: Arc<str>,
        limit: Arc<str>,
        metric: BudgetMetric,
        subject: Subject,
    ) -> Self {
        Self {
            policy,
            limit,
            kind: LimitKind::Budget(metric),
            subject,
        }
    }
}

impl fmt::Display for CounterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            LimitKind::RateLimit => "rate limit",
            LimitKind::Budget(_) => "budget",
        };
        write!(
            f,
            "{what} {:?} of policy {:?} for {}",
            &*self.limit, &*self.policy, self.subject
        )
    }
}

/// One counter a call would charge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Charge {
    /// The counter.
    pub key: CounterKey,
    /// How much the call adds: 1 for rate limits and tool-call budgets, the estimate for token
    /// and cost budgets (0 when the caller gave none; the commit then charges the actual).
    pub amount: u64,
    /// The limit in the counter's unit, as the current policy revision says.
    pub limit: u64,
    /// The fixed window, opened at the first counted call; `None`: never resets.
    pub window: Option<Duration>,
}

impl Charge {
    /// One call against a rate limit of `limit` calls per `window`.
    pub fn rate_limit(
        policy: Arc<str>,
        name: Arc<str>,
        subject: Subject,
        limit: u64,
        window: Duration,
    ) -> Self {
        Self {
            key: CounterKey::rate_limit(policy, name, subject),
            amount: 1,
            limit,
            window: Some(window),
        }
    }

    /// `amount` units against a budget (`window: None` for a lifetime or per-session budget).
    pub fn budget(key: CounterKey, amount: u64, limit: u64, window: Option<Duration>) -> Self {
        Self {
            key,
            amount,
            limit,
            window,
        }
    }
}

/// The first charge of a call that did not fit: which limit, and by how much.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    /// Index of the offending charge in the slice that was passed.
    pub index: usize,
    /// The offending counter (its `kind` tells a rate limit from a budget).
    pub key: CounterKey,
    /// The limit.
    pub limit: u64,
    /// What the counter held, counting earlier charges of the same call to the same key.
    pub used: u64,
    /// What the call asked for.
    pub requested: u64,
    /// When the current window ends (`None` for budgets that never reset).
    pub resets_at: Option<DateTime<Utc>>,
}

impl Exceeded {
    /// Whether a rate limit (rather than a budget) was exceeded.
    pub fn is_rate_limit(&self) -> bool {
        self.key.kind == LimitKind::RateLimit
    }
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.key.kind {
            LimitKind::RateLimit => "calls",
            LimitKind::Budget(m) => m.unit(),
        };
        write!(
            f,
            "{} exceeded: {} of {} {unit} used, {} requested",
            self.key, self.used, self.limit, self.requested
        )?;
        if let Some(at) = self.resets_at {
            write!(f, "; the window resets at {}", at.to_rfc3339())?;
        }
        Ok(())
    }
}

impl std::error::Error for Exceeded {}

/// The id of a reservation of estimated token/cost usage, handed back to [`LimitState::commit`].
///
/// Ids are sequential and not secret: the layer that accepts commits must check who commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReservationId(pub u64);

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a successful [`LimitState::check_and_charge`] returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    /// The reservation to commit actual usage against; `None` when the call charged no token or
    /// cost budget (rate limits and tool-call budgets need no commit).
    pub id: Option<ReservationId>,
}

/// Actual usage reported after a call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    /// Actual tokens; `None` keeps the token estimate.
    pub tokens: Option<u64>,
    /// Actual cost in micro-USD; `None` keeps the cost estimate.
    pub cost_micro_usd: Option<u64>,
}

/// What a commit changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitReport {
    /// Counters whose estimate was replaced by the actual.
    pub adjusted: usize,
    /// Counters left alone because their window had rolled over (or they were pruned) since the
    /// reservation, or because the usage did not report their metric.
    pub unchanged: usize,
}

/// Why a commit was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The reservation was never issued, or expired (its estimate stays charged).
    #[error("reservation {0} is unknown or expired; its estimate stays charged")]
    Unknown(ReservationId),
    /// The reservation was already committed; usage is committed once.
    #[error("reservation {0} was already committed; usage is committed once")]
    AlreadyCommitted(ReservationId),
}

/// Tuning of a [`LimitState`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsConfig {
    /// Number of lock shards (rounded up to a power of two, at least 1). Default 64.
    pub shards: usize,
    /// How long an uncommitted reservation can still be committed. Default 1 hour.
    pub reservation_ttl: Duration,
    /// At most this many reservations are kept; past it the oldest are forgotten (their estimates
    /// stay charged). Default 100,000.
    pub max_reservations: usize,
    /// Counters without a window that have not been charged for this long are forgotten by
    /// [`LimitState::prune`] when their subject is a `Session` (sessions end; their budgets with
    /// them). `None` keeps them forever. Default 24 hours.
    pub session_idle_ttl: Option<Duration>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            shards: 64,
            reservation_ttl: Duration::from_secs(3600),
            max_reservations: 100_000,
            session_idle_ttl: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

/// One counter's state. Times are milliseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counter {
    used: u64,
    /// When the current window opened (the first counted call).
    window_start: i64,
    /// The window length last charged with; 0: no window.
    window_ms: u64,
    /// The last charge.
    touched: i64,
}

impl Counter {
    fn window_end(&self) -> Option<i64> {
        (self.window_ms > 0).then(|| {
            self.window_start
                .saturating_add(i64::try_from(self.window_ms).unwrap_or(i64::MAX))
        })
    }

    fn expired(&self, now: i64) -> bool {
        self.window_end().is_some_and(|end| now >= end)
    }

    /// Usage that counts at `now`: zero once the window is over.
    fn effective(&self, now: i64) -> u64 {
        if self.expired(now) { 0 } else { self.used }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct ReservedItem {
    key: CounterKey,
    metric: BudgetMetric,
    estimate: u64,
    window_start: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PendingReservation {
    created: i64,
    committed: bool,
    items: Vec<ReservedItem>,
}

type Shard = HashMap<CounterKey, Counter>;
type ReservationShard = BTreeMap<u64, PendingReservation>;

/// The rate limit and budget counters of one process. Share it behind an `Arc`.
#[derive(Debug)]
pub struct LimitState {
    config: LimitsConfig,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
    reservations: Box<[Mutex<ReservationShard>]>,
    next_reservation: AtomicU64,
    /// Bumped on every change, so a persister can skip writes when nothing changed.
    generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code path panics while holding a shard lock with a half-done update, so a poisoned
    // lock's data is consistent and safe to keep using.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn to_time(ms: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
}

impl Default for LimitState {
    fn default() -> Self {
        Self::new(LimitsConfig::default())
    }
}

impl LimitState {
    /// Empty state.
    pub fn new(config: LimitsConfig) -> Self {
        let n = config.shards.max(1).next_power_of_two();
        Self {
            shards: (0..n).map(|_| Mutex::new(Shard::new())).collect(),
            reservations: (0..n)
                .map(|_| Mutex::new(ReservationShard::new()))
                .collect(),
            hasher: RandomState::new(),
            next_reservation: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LimitsConfig {
        &self.config
    }

    fn shard_of(&self, key: &CounterKey) -> usize {
        (self.hasher.hash_one(key) as usize) & (self.shards.len() - 1)
    }

    fn reservation_shard(&self, id: u64) -> &Mutex<ReservationShard> {
        &self.reservations[(id as usize) & (self.reservations.len() - 1)]
    }

    /// Locks the shards of `keys` in ascending shard order; returns the guards and, per key, the
    /// index of its guard.
    fn lock_for<'a, I>(&'a self, keys: I) -> (Vec<MutexGuard<'a, Shard>>, Vec<usize>)
    where
        I: Iterator<Item = &'a CounterKey> + Clone,
    {
        let shard_ids: Vec<usize> = keys.map(|k| self.shard_of(k)).collect();
        let mut order = shard_ids.clone();
        order.sort_unstable();
        order.dedup();
        let guards = order.iter().map(|&s| lock(&self.shards[s])).collect();
        let slots = shard_ids
            .iter()
            .map(|s| order.binary_search(s).unwrap_or(0))
            .collect();
        (guards, slots)
    }

    /// Checks every charge against its counter without changing anything. `Err` names the first
    /// charge that would not fit. Earlier charges of the same call to the same key count.
    fn verify(
        guards: &[MutexGuard<'_, Shard>],
        slots: &[usize],
        charges: &[Charge],
        now: i64,
    ) -> Result<(), Box<Exceeded>> {
        for (i, charge) in charges.iter().enumerate() {
            let counter = guards[slots[i]].get(&charge.key);
            let mut used = counter.map_or(0, |c| c.effective(now));
            for earlier in &charges[..i] {
                if earlier.key == charge.key {
                    used = used.saturating_add(earlier.amount);
                }
            }
            let remaining = charge.limit.saturating_sub(used);
            if used >= charge.limit || charge.amount > remaining {
                let resets_at = match (counter, charge.window) {
                    (Some(c), Some(w)) if !c.expired(now) => to_time(
                        c.window_start
                            .saturating_add(i64::try_from(millis(w)).unwrap_or(i64::MAX)),
                    ),
                    (_, Some(w)) => {
                        to_time(now.saturating_add(i64::try_from(millis(w)).unwrap_or(i64::MAX)))
                    }
                    (_, None) => None,
                };
                return Err(Box::new(Exceeded {
                    index: i,
                    key: charge.key.clone(),
                    limit: charge.limit,
                    used,
                    requested: charge.amount,
                    resets_at,
                }));
            }
        }
        Ok(())
    }

    /// Whether every charge would fit, without charging anything (for calls that will not be
    /// allowed for another reason, and for dry runs).
    pub fn check(&self, charges: &[Charge], now: DateTime<Utc>) -> Result<(), Box<Exceeded>> {
        if charges.is_empty() {
            return Ok(());
        }
        let (guards, slots) = self.lock_for(charges.iter().map(|c| &c.key));
        Self::verify(&guards, &slots, charges, now.timestamp_millis())
    }

    /// Charges every counter, or — when any charge would go over its limit — none, and names the
    /// first that would. Atomic with respect to all other calls. Token and cost budget charges are
    /// recorded in a [`Reservation`] for a later [`commit`](Self::commit).
    pub fn check_and_charge(
        &self,
        charges: &[Charge],
        now: DateTime<Utc>,
    ) -> Result<Reservation, Box<Exceeded>> {
        if charges.is_empty() {
            return Ok(Reservation { id: None });
        }
        let now_ms = now.timestamp_millis();
        let (mut guards, slots) = self.lock_for(charges.iter().map(|c| &c.key));
        Self::verify(&guards, &slots, charges, now_ms)?;

        let mut items = Vec::new();
        for (i, charge) in charges.iter().enumerate() {
            let shard = &mut guards[slots[i]];
            let window_ms = charge.window.map_or(0, millis);
            if !shard.contains_key(&charge.key) {
                shard.insert(
                    charge.key.clone(),
                    Counter {
                        used: 0,
                        window_start: now_ms,
                        window_ms,
                        touched: now_ms,
                    },
                );
            }
            let Some(counter) = shard.get_mut(&charge.key) else {
                continue;
            };
            if counter.expired(now_ms) {
                // A new window opens at this, its first counted call.
                counter.used = 0;
                counter.window_start = now_ms;
            }
            counter.window_ms = window_ms;
            counter.used = counter.used.saturating_add(charge.amount);
            counter.touched = now_ms;
            if let LimitKind::Budget(metric) = charge.key.kind
                && metric.is_committed()
            {
                items.push(ReservedItem {
                    key: charge.key.clone(),
                    metric,
                    estimate: charge.amount,
                    window_start: counter.window_start,
                });
            }
        }
        drop(guards);
        self.generation.fetch_add(1, Ordering::Relaxed);

        if items.is_empty() {
            return Ok(Reservation { id: None });
        }
        let id = self.next_reservation.fetch_add(1, Ordering::Relaxed);
        self.insert_reservation(
            id,
            PendingReservation {
                created: now_ms,
                committed: false,
                items,
            },
            now_ms,
        );
        Ok(Reservation {
            id: Some(ReservationId(id)),
        })
    }

    fn insert_reservation(&self, id: u64, pending: PendingReservation, now: i64) {
        let ttl = i64::try_from(millis(self.config.reservation_ttl)).unwrap_or(i64::MAX);
        let per_shard = (self.config.max_reservations / self.reservations.len()).max(1);
        let mut shard = lock(self.reservation_shard(id));
        shard.insert(id, pending);
        // Ids grow with time, so the oldest reservations sit first in each shard.
        loop {
            let len = shard.len();
            match shard.first_entry() {
                Some(oldest)
                    if len > per_shard || oldest.get().created.saturating_add(ttl) <= now =>
                {
                    oldest.remove();
                }
                _ => break,
            }
        }
    }

    /// Replaces the estimates of a reservation with the actual usage. A reservation commits once.
    pub fn commit(
        &self,
        id: ReservationId,
        actual: Usage,
        now: DateTime<Utc>,
    ) -> Result<CommitReport, CommitError> {
        let now_ms = now.timestamp_millis();
        let ttl = i64::try_from(millis(self.config.reservation_ttl)).unwrap_or(i64::MAX);
        let items = {
            let mut shard = lock(self.reservation_shard(id.0));
            let pending = shard.get_mut(&id.0).ok_or(CommitError::Unknown(id))?;
            if pending.created.saturating_add(ttl) <= now_ms {
                shard.remove(&id.0);
                return Err(CommitError::Unknown(id));
            }
            if pending.committed {
                return Err(CommitError::AlreadyCommitted(id));
            }
            pending.committed = true;
            // The entry stays (marked committed) until it expires, so that a second commit gets a
            // clear answer; its items are no longer needed.
            std::mem::take(&mut pending.items)
        };

        let mut report = CommitReport::default();
        let (mut guards, slots) = self.lock_for(items.iter().map(|i| &i.key));
        for (i, item) in items.iter().enumerate() {
            let actual = match item.metric {
                BudgetMetric::Tokens => actual.tokens,
                BudgetMetric::CostMicroUsd => actual.cost_micro_usd,
                BudgetMetric::ToolCalls => None,
            };
            let counter = guards[slots[i]]
                .get_mut(&item.key)
                .filter(|c| c.window_start == item.window_start);
            match (counter, actual) {
                (Some(counter), Some(actual)) => {
                    counter.used = counter
                        .used
                        .saturating_sub(item.estimate)
                        .saturating_add(actual);
                    report.adjusted += 1;
                }
                _ => report.unchanged += 1,
            }
        }
        drop(guards);
        self.generation.fetch_add(1, Ordering::Relaxed);
        Ok(report)
    }

    /// What a counter holds at `now` (0 when absent or its window is over).
    pub fn usage(&self, key: &CounterKey, now: DateTime<Utc>) -> u64 {
        let shard = lock(&self.shards[self.shard_of(key)]);
        shard
            .get(key)
            .map_or(0, |c| c.effective(now.timestamp_millis()))
    }

    /// Number of counters held (including ones whose window is over but not yet pruned).
    pub fn counters(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Number of reservations held (committed ones are kept until they expire).
    pub fn reservations(&self) -> usize {
        self.reservations.iter().map(|s| lock(s).len()).sum()
    }

    /// Forgets what no longer counts: counters whose window is over, idle session counters
    /// without a window (see [`LimitsConfig::session_idle_ttl`]) and expired reservations.
    /// Returns how many entries were removed. A [`Persister`] calls this every interval.
    pub fn prune(&self, now: DateTime<Utc>) -> usize {
        let now_ms = now.timestamp_millis();
        let idle = self
            .config
            .session_idle_ttl
            .map(|d| i64::try_from(millis(d)).unwrap_or(i64::MAX));
        let ttl = i64::try_from(millis(self.config.reservation_ttl)).unwrap_or(i64::MAX);
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|key, c| {
                if c.expired(now_ms) {
                    return false;
                }
                match (idle, c.window_ms, key.subject.kind()) {
                    (Some(idle), 0, KeyKind::Session) => c.touched.saturating_add(idle) > now_ms,
                    _ => true,
                }
            });
            removed += before - shard.len();
        }
        for shard in self.reservations.iter() {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, r| r.created.saturating_add(ttl) > now_ms);
            removed += before - shard.len();
        }
        if removed > 0 {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }

    /// A number that changes whenever the state does.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests;
