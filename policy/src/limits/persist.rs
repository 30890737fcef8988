//! Snapshots of the limit state: a versioned JSON document written atomically, and a persister
//! thread that writes one every interval.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{
    BudgetMetric, Counter, CounterKey, LimitKind, LimitState, LimitsConfig, PendingReservation,
    ReservedItem, Subject, lock, millis,
};

/// The snapshot format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Why the limit state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing the file failed.
    #[error("cannot {op} limits state file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is not a valid snapshot.
    #[error("limits state file {} is corrupt ({source}); move it aside to start with empty counters", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The file was written by a build with another snapshot format.
    #[error("limits state file {} has format version {found}, this build reads version {SNAPSHOT_VERSION}", path.display())]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version found in it.
        found: u64,
    },
}

/// One counter in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CounterRecord {
    policy: String,
    limit: String,
    kind: LimitKind,
    subject: Subject,
    used: u64,
    window_start_ms: i64,
    /// 0: no window.
    window_ms: u64,
    touched_ms: i64,
}

/// One reserved estimate in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ItemRecord {
    policy: String,
    limit: String,
    metric: BudgetMetric,
    subject: Subject,
    estimate: u64,
    window_start_ms: i64,
}

/// One reservation in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReservationRecord {
    id: u64,
    created_ms: i64,
    committed: bool,
    items: Vec<ItemRecord>,
}

/// A point-in-time copy of a [`LimitState`], serialisable as versioned JSON.
///
/// Each shard is copied under its own lock, one after the other: every counter's value is one it
/// really had, and decisions are never stalled for the whole copy. A call that charged counters in
/// two shards while the copy ran may appear charged in one and not (yet) in the other, which is
/// within the crash-loss bound of one interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitSnapshot {
    version: u32,
    taken_at: DateTime<Utc>,
    next_reservation_id: u64,
    counters: Vec<CounterRecord>,
    reservations: Vec<ReservationRecord>,
}

#[derive(Deserialize)]
struct VersionProbe {
    version: Option<u64>,
}

impl LimitSnapshot {
    /// When the snapshot was taken.
    pub fn taken_at(&self) -> DateTime<Utc> {
        self.taken_at
    }

    /// Number of counters in it.
    pub fn counter_count(&self) -> usize {
        self.counters.len()
    }

    /// Number of reservations in it.
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// Parses a snapshot; `path` only names the source in errors.
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, PersistError> {
        let corrupt = |source| PersistError::Corrupt {
            path: path.to_path_buf(),
            source,
        };
        let probe: VersionProbe = serde_json::from_slice(bytes).map_err(corrupt)?;
        match probe.version {
            Some(v) if v == u64::from(SNAPSHOT_VERSION) => {}
            Some(found) => {
                return Err(PersistError::UnsupportedVersion {
                    path: path.to_path_buf(),
                    found,
                });
            }
            None => return Err(corrupt(serde::de::Error::missing_field("version"))),
        }
        serde_json::from_slice(bytes).map_err(corrupt)
    }

    /// The snapshot as JSON.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers into memory cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a snapshot file; `Ok(None)` when there is none.
    pub fn read(path: &Path) -> Result<Option<Self>, PersistError> {
        match fs::read(path) {
            Ok(bytes) => Self::from_json(&bytes, path).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(PersistError::Io {
                path: path.to_path_buf(),
                op: "read",
                source,
            }),
        }
    }

    /// Writes the snapshot atomically: a temporary file in the same directory, fsync, rename over
    /// `path`, fsync of the directory. A crash leaves either the old or the new file, never a mix.
    pub fn write_atomic(&self, path: &Path) -> Result<(), PersistError> {
        write_atomic(path, &self.to_json())
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    let io_err = |op, source| PersistError::Io {
        path: path.to_path_buf(),
        op,
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write a temporary copy of", e));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("replace", e));
    }
    // Make the rename itself durable.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("sync the directory of", e))
}

/// Hands out one `Arc<str>` per distinct name while restoring.
#[derive(Default)]
struct Interner(HashMap<String, Arc<str>>);

impl Interner {
    fn get(&mut self, s: String) -> Arc<str> {
        if let Some(a) = self.0.get(&s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s.as_str());
        self.0.insert(s, a.clone());
        a
    }
}

impl LimitState {
    /// Copies the state (see [`LimitSnapshot`] for the consistency it gives).
    pub fn snapshot(&self, now: DateTime<Utc>) -> LimitSnapshot {
        let mut counters = Vec::new();
        for shard in self.shards.iter() {
            let shard = lock(shard);
            counters.extend(shard.iter().map(|(k, c)| CounterRecord {
                policy: k.policy.to_string(),
                limit: k.limit.to_string(),
                kind: k.kind,
                subject: k.subject.clone(),
                used: c.used,
                window_start_ms: c.window_start,
                window_ms: c.window_ms,
                touched_ms: c.touched,
            }));
        }
        let mut reservations = Vec::new();
        for shard in self.reservations.iter() {
            let shard = lock(shard);
            reservations.extend(shard.iter().map(|(&id, r)| {
                ReservationRecord {
                    id,
                    created_ms: r.created,
                    committed: r.committed,
                    items: r
                        .items
                        .iter()
                        .map(|i| ItemRecord {
                            policy: i.key.policy.to_string(),
                            limit: i.key.limit.to_string(),
                            metric: i.metric,
                            subject: i.key.subject.clone(),
                            estimate: i.estimate,
                            window_start_ms: i.window_start,
                        })
                        .collect(),
                }
            }));
        }
        // A stable order makes snapshots of equal states byte-equal.
        counters.sort_by(|a, b| {
            (&a.policy, &a.limit, a.kind, &a.subject)
                .cmp(&(&b.policy, &b.limit, b.kind, &b.subject))
        });
        reservations.sort_by_key(|r| r.id);
        LimitSnapshot {
            version: SNAPSHOT_VERSION,
            taken_at: now,
            next_reservation_id: self.next_reservation.load(Ordering::Relaxed),
            counters,
            reservations,
        }
    }

    /// Rebuilds a state from a snapshot. Windows that ended by `now` (while the service was down)
    /// are expired, and so are reservations past their time to live.
    pub fn from_snapshot(
        config: LimitsConfig,
        snapshot: LimitSnapshot,
        now: DateTime<Utc>,
    ) -> Self {
        let state = Self::new(config);
        let now_ms = now.timestamp_millis();
        let ttl = i64::try_from(millis(state.config.reservation_ttl)).unwrap_or(i64::MAX);
        let mut names = Interner::default();
        for c in snapshot.counters {
            let counter = Counter {
                used: c.used,
                window_start: c.window_start_ms,
                window_ms: c.window_ms,
                touched: c.touched_ms,
            };
            if counter.expired(now_ms) {
                continue;
            }
            let key = CounterKey {
                policy: names.get(c.policy),
                limit: names.get(c.limit),
                kind: c.kind,
                subject: c.subject,
            };
            let shard = state.shard_of(&key);
            lock(&state.shards[shard]).insert(key, counter);
        }
        let mut max_id = 0;
        for r in snapshot.reservations {
            max_id = max_id.max(r.id);
            if r.created_ms.saturating_add(ttl) <= now_ms {
                continue;
            }
            let items = r
                .items
                .into_iter()
                .map(|i| ReservedItem {
                    key: CounterKey {
                        policy: names.get(i.policy),
                        limit: names.get(i.limit),
                        kind: LimitKind::Budget(i.metric),
                        subject: i.subject,
                    },
                    metric: i.metric,
                    estimate: i.estimate,
                    window_start: i.window_start_ms,
                })
                .collect();
            lock(state.reservation_shard(r.id)).insert(
                r.id,
                PendingReservation {
                    created: r.created_ms,
                    committed: r.committed,
                    items,
                },
            );
        }
        let next = snapshot
            .next_reservation_id
            .max(max_id.saturating_add(1))
            .max(1);
        state.next_reservation.store(next, Ordering::Relaxed);
        state
    }

    /// Loads the state saved at `path`, or an empty state when there is no file yet. A corrupt or
    /// unreadable file is an error (never silently replaced by empty counters).
    pub fn load(
        config: LimitsConfig,
        path: &Path,
        now: DateTime<Utc>,
    ) -> Result<Self, PersistError> {
        Ok(match LimitSnapshot::read(path)? {
            Some(snapshot) => Self::from_snapshot(config, snapshot, now),
            None => Self::new(config),
        })
    }

    /// Snapshots the state and writes it atomically to `path`.
    pub fn persist(&self, path: &Path, now: DateTime<Utc>) -> Result<(), PersistError> {
        self.snapshot(now).write_atomic(path)
    }
}

#[derive(Debug, Default)]
struct PersisterStats {
    writes: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// Writes a [`LimitState`] to a file every interval, from a thread of its own, and once more when
/// stopped. Each tick also [prunes](LimitState::prune) what no longer counts; a tick in which the
/// state did not change writes nothing.
///
/// **Crash-loss bound:** a crash (or `kill -9`) loses at most the charges and commits made since
/// the last successful write began: one interval plus the duration of a write. A clean stop loses
/// nothing.
#[derive(Debug)]
pub struct Persister {
    state: Arc<LimitState>,
    path: PathBuf,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<PersisterStats>,
}

impl Persister {
    /// The default interval: one second.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

    /// Starts writing `state` to `path` every `interval`.
    pub fn start(
        state: Arc<LimitState>,
        path: PathBuf,
        interval: Duration,
    ) -> Result<Self, PersistError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let stats = Arc::new(PersisterStats::default());
        let thread = {
            let (state, target, stats) = (state.clone(), path.clone(), stats.clone());
            std::thread::Builder::new()
                .name("limits-persister".into())
                .spawn(move || {
                    // The generation last written; `u64::MAX` forces the first write.
                    let mut written = u64::MAX;
                    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                        let now = Utc::now();
                        state.prune(now);
                        let generation = state.generation();
                        if generation == written {
                            continue;
                        }
                        match state.persist(&target, now) {
                            Ok(()) => {
                                written = generation;
                                stats.writes.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => {
                                stats.failures.fetch_add(1, Ordering::Relaxed);
                                *lock(&stats.last_error) = Some(e.to_string());
                            }
                        }
                    }
                })
                .map_err(|source| PersistError::Io {
                    path: path.clone(),
                    op: "start the persister thread for",
                    source,
                })?
        };
        Ok(Self {
            state,
            path,
            stop: Some(stop),
            thread: Some(thread),
            stats,
        })
    }

    /// Successful interval writes so far.
    pub fn writes(&self) -> u64 {
        self.stats.writes.load(Ordering::Relaxed)
    }

    /// Failed interval writes so far.
    pub fn failures(&self) -> u64 {
        self.stats.failures.load(Ordering::Relaxed)
    }

    /// The message of the last failed write, if any.
    pub fn last_error(&self) -> Option<String> {
        lock(&self.stats.last_error).clone()
    }

    fn halt(&mut self) -> Result<(), PersistError> {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
            return self.state.persist(&self.path, Utc::now());
        }
        Ok(())
    }

    /// Stops the thread and writes the state one last time.
    pub fn stop(mut self) -> Result<(), PersistError> {
        self.halt()
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        // Best effort on drop; call `stop` to see the error.
        let _ = self.halt();
    }
}
