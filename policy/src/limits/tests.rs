use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use super::*;

fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default()
}

fn at(secs: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(secs)
}

fn rate(limit: u64, window_secs: u64, subject: Subject) -> Charge {
    Charge::rate_limit(
        "ns/p".into(),
        "calls".into(),
        subject,
        limit,
        Duration::from_secs(window_secs),
    )
}

fn budget(
    name: &str,
    metric: BudgetMetric,
    subject: Subject,
    amount: u64,
    limit: u64,
    window: Option<u64>,
) -> Charge {
    Charge::budget(
        CounterKey::budget("ns/p".into(), name.into(), metric, subject),
        amount,
        limit,
        window.map(Duration::from_secs),
    )
}

fn agent(a: &str) -> Subject {
    Subject::Agent(a.into())
}

fn tenant(t: &str) -> Subject {
    Subject::Tenant(t.into())
}

#[test]
fn window_opens_at_first_counted_call_and_resets_after() {
    let state = LimitState::default();
    let c = [rate(2, 60, agent("a"))];
    // Uncounted checks before the first charge do not open the window.
    assert!(state.check(&c, at(0)).is_ok());
    assert!(state.check_and_charge(&c, at(10)).is_ok()); // window opens at 10 s
    assert!(state.check_and_charge(&c, at(20)).is_ok());
    let err = state.check_and_charge(&c, at(30)).unwrap_err();
    assert!(err.is_rate_limit());
    assert_eq!((err.used, err.limit, err.index), (2, 2, 0));
    assert_eq!(err.resets_at, Some(at(70)));
    // Still inside the window that opened at 10 s (not at 0 s).
    assert!(state.check_and_charge(&c, at(69)).is_err());
    // The window is over at 70 s: a new one opens at this call.
    assert!(state.check_and_charge(&c, at(70)).is_ok());
    assert_eq!(state.usage(&c[0].key, at(70)), 1);
    assert!(state.check_and_charge(&c, at(129)).is_ok());
    assert!(state.check_and_charge(&c, at(129)).is_err());
    assert_eq!(state.usage(&c[0].key, at(130)), 0);
}

#[test]
fn check_never_charges() {
    let state = LimitState::default();
    let c = [rate(1, 60, agent("a"))];
    for _ in 0..5 {
        assert!(state.check(&c, at(0)).is_ok());
    }
    assert_eq!(state.usage(&c[0].key, at(0)), 0);
    assert_eq!(state.counters(), 0);
    assert!(state.check_and_charge(&c, at(0)).is_ok());
    assert!(state.check(&c, at(1)).is_err());
}

#[test]
fn all_or_nothing_across_two_limits() {
    let state = LimitState::default();
    let per_agent = rate(10, 60, agent("a"));
    let tool_budget = budget(
        "tool-calls",
        BudgetMetric::ToolCalls,
        tenant("t1"),
        1,
        2,
        None,
    );
    let both = [per_agent.clone(), tool_budget.clone()];
    assert!(state.check_and_charge(&both, at(0)).is_ok());
    assert!(state.check_and_charge(&both, at(1)).is_ok());
    let err = state.check_and_charge(&both, at(2)).unwrap_err();
    assert_eq!(err.index, 1);
    assert!(!err.is_rate_limit());
    assert_eq!(err.key.kind, LimitKind::Budget(BudgetMetric::ToolCalls));
    assert_eq!(err.resets_at, None);
    // The rate limit was not charged by the refused call.
    assert_eq!(state.usage(&per_agent.key, at(2)), 2);
    assert_eq!(state.usage(&tool_budget.key, at(2)), 2);
    // And the other way around: a full rate limit leaves the budget untouched.
    let state = LimitState::default();
    let tight = rate(1, 60, agent("a"));
    let roomy = budget(
        "tokens",
        BudgetMetric::Tokens,
        tenant("t1"),
        100,
        1_000,
        None,
    );
    assert!(
        state
            .check_and_charge(std::slice::from_ref(&tight), at(0))
            .is_ok()
    );
    let err = state
        .check_and_charge(&[roomy.clone(), tight], at(1))
        .unwrap_err();
    assert_eq!(err.index, 1);
    assert!(err.is_rate_limit());
    assert_eq!(state.usage(&roomy.key, at(1)), 0);
    assert_eq!(state.reservations(), 0);
}

#[test]
fn same_key_twice_in_one_call_counts_both() {
    let state = LimitState::default();
    let c = rate(3, 60, agent("a"));
    assert!(
        state
            .check_and_charge(&[c.clone(), c.clone()], at(0))
            .is_ok()
    );
    let err = state
        .check_and_charge(&[c.clone(), c.clone()], at(1))
        .unwrap_err();
    assert_eq!((err.index, err.used), (1, 3));
    assert_eq!(state.usage(&c.key, at(1)), 2);
}

#[test]
fn tenants_are_isolated() {
    let state = LimitState::default();
    let a = [rate(3, 3600, tenant("acme"))];
    let b = [rate(3, 3600, tenant("globex"))];
    for i in 0..3 {
        assert!(state.check_and_charge(&a, at(i)).is_ok());
    }
    for i in 3..10 {
        assert!(state.check_and_charge(&a, at(i)).is_err());
    }
    for i in 10..13 {
        assert!(
            state.check_and_charge(&b, at(i)).is_ok(),
            "tenant globex is not limited by acme"
        );
    }
    assert!(state.check_and_charge(&b, at(13)).is_err());
    // Subjects of different kinds with the same value never share a counter either.
    let user = [rate(3, 3600, Subject::User("acme".into()))];
    assert!(state.check_and_charge(&user, at(14)).is_ok());
    // Nor do a rate limit and a budget with the same name.
    let same_name = [Charge::budget(
        CounterKey::budget(
            "ns/p".into(),
            "calls".into(),
            BudgetMetric::ToolCalls,
            tenant("acme"),
        ),
        1,
        3,
        None,
    )];
    assert!(state.check_and_charge(&same_name, at(15)).is_ok());
}

#[test]
fn zero_estimate_is_refused_once_a_budget_is_spent() {
    let state = LimitState::default();
    let c = [budget(
        "tokens",
        BudgetMetric::Tokens,
        agent("a"),
        0,
        100,
        None,
    )];
    let r = state
        .check_and_charge(&c, at(0))
        .unwrap_or(Reservation { id: None });
    let id = r.id.unwrap_or(ReservationId(0));
    assert!(
        state
            .commit(
                id,
                Usage {
                    tokens: Some(100),
                    cost_micro_usd: None
                },
                at(1)
            )
            .is_ok()
    );
    let err = state.check_and_charge(&c, at(2)).unwrap_err();
    assert_eq!((err.used, err.requested), (100, 0));
}

#[test]
fn reserve_then_commit_replaces_the_estimate() {
    let state = LimitState::default();
    let tokens = budget(
        "tokens",
        BudgetMetric::Tokens,
        tenant("t1"),
        400,
        1_000,
        Some(3600),
    );
    let cost = budget(
        "cost",
        BudgetMetric::CostMicroUsd,
        tenant("t1"),
        50_000,
        100_000,
        None,
    );
    let calls = budget("calls", BudgetMetric::ToolCalls, tenant("t1"), 1, 10, None);
    let charges = [tokens.clone(), cost.clone(), calls.clone()];
    let r = state.check_and_charge(&charges, at(0)).expect("fits");
    let id = r.id.expect("token and cost budgets give a reservation");
    assert_eq!(state.usage(&tokens.key, at(0)), 400);
    assert_eq!(state.usage(&cost.key, at(0)), 50_000);

    let report = state
        .commit(
            id,
            Usage {
                tokens: Some(150),
                cost_micro_usd: Some(80_000),
            },
            at(1),
        )
        .expect("first commit");
    assert_eq!(
        report,
        CommitReport {
            adjusted: 2,
            unchanged: 0
        }
    );
    assert_eq!(state.usage(&tokens.key, at(1)), 150);
    assert_eq!(state.usage(&cost.key, at(1)), 80_000);
    assert_eq!(state.usage(&calls.key, at(1)), 1);

    // The next call's estimate no longer fits the cost budget (80k + 50k > 100k).
    let err = state.check_and_charge(&charges, at(2)).unwrap_err();
    assert_eq!(err.key, cost.key);

    // A commit that reports only tokens keeps the cost estimate.
    let small = [
        budget(
            "tokens",
            BudgetMetric::Tokens,
            tenant("t1"),
            100,
            1_000,
            Some(3600),
        ),
        budget(
            "cost",
            BudgetMetric::CostMicroUsd,
            tenant("t1"),
            10_000,
            100_000,
            None,
        ),
    ];
    let id = state
        .check_and_charge(&small, at(3))
        .expect("fits")
        .id
        .expect("reservation");
    let report = state
        .commit(
            id,
            Usage {
                tokens: Some(0),
                cost_micro_usd: None,
            },
            at(4),
        )
        .expect("commit");
    assert_eq!(
        report,
        CommitReport {
            adjusted: 1,
            unchanged: 1
        }
    );
    assert_eq!(state.usage(&tokens.key, at(4)), 150);
    assert_eq!(state.usage(&cost.key, at(4)), 90_000);
}

#[test]
fn rate_limits_and_call_budgets_need_no_reservation() {
    let state = LimitState::default();
    let r = state
        .check_and_charge(
            &[
                rate(5, 60, agent("a")),
                budget("calls", BudgetMetric::ToolCalls, agent("a"), 1, 5, None),
            ],
            at(0),
        )
        .expect("fits");
    assert_eq!(r.id, None);
    assert_eq!(state.reservations(), 0);
}

#[test]
fn double_commit_is_rejected() {
    let state = LimitState::default();
    let c = [budget(
        "tokens",
        BudgetMetric::Tokens,
        agent("a"),
        10,
        1_000,
        None,
    )];
    let id = state
        .check_and_charge(&c, at(0))
        .expect("fits")
        .id
        .expect("reservation");
    let usage = Usage {
        tokens: Some(20),
        cost_micro_usd: None,
    };
    assert!(state.commit(id, usage, at(1)).is_ok());
    let err = state.commit(id, usage, at(2)).unwrap_err();
    assert_eq!(err, CommitError::AlreadyCommitted(id));
    assert!(err.to_string().contains("already committed"));
    assert_eq!(
        state.usage(&c[0].key, at(2)),
        20,
        "the second commit changed nothing"
    );
    assert_eq!(
        state
            .commit(ReservationId(9_999), usage, at(2))
            .unwrap_err(),
        CommitError::Unknown(ReservationId(9_999))
    );
}

#[test]
fn uncommitted_reservations_keep_their_estimate_and_expire() {
    let config = LimitsConfig {
        reservation_ttl: Duration::from_secs(60),
        ..LimitsConfig::default()
    };
    let state = LimitState::new(config);
    let c = [budget(
        "tokens",
        BudgetMetric::Tokens,
        agent("a"),
        300,
        1_000,
        None,
    )];
    let id = state
        .check_and_charge(&c, at(0))
        .expect("fits")
        .id
        .expect("reservation");
    assert_eq!(state.reservations(), 1);
    let late = state.commit(
        id,
        Usage {
            tokens: Some(1),
            cost_micro_usd: None,
        },
        at(60),
    );
    assert_eq!(late.unwrap_err(), CommitError::Unknown(id));
    assert_eq!(
        state.usage(&c[0].key, at(60)),
        300,
        "the estimate stays charged"
    );
    // Pruning forgets expired reservations; lifetime counters stay.
    let id2 = state
        .check_and_charge(&c, at(61))
        .expect("fits")
        .id
        .expect("reservation");
    assert_eq!(state.prune(at(200)), 1);
    assert_eq!(state.reservations(), 0);
    assert_eq!(state.usage(&c[0].key, at(200)), 600);
    assert_eq!(
        state.commit(id2, Usage::default(), at(200)).unwrap_err(),
        CommitError::Unknown(id2)
    );
}

#[test]
fn reservations_are_bounded() {
    let config = LimitsConfig {
        shards: 4,
        max_reservations: 8,
        ..LimitsConfig::default()
    };
    let state = LimitState::new(config);
    let c = [budget(
        "tokens",
        BudgetMetric::Tokens,
        agent("a"),
        1,
        u64::MAX,
        None,
    )];
    let ids: Vec<_> = (0..100)
        .filter_map(|i| state.check_and_charge(&c, at(i)).ok().and_then(|r| r.id))
        .collect();
    assert_eq!(ids.len(), 100);
    assert!(state.reservations() <= 8);
    let newest = ids[ids.len() - 1];
    assert!(state.commit(newest, Usage::default(), at(100)).is_ok());
    assert_eq!(
        state.commit(ids[0], Usage::default(), at(100)).unwrap_err(),
        CommitError::Unknown(ids[0])
    );
}

#[test]
fn commit_after_the_window_rolled_leaves_the_new_window_alone() {
    let state = LimitState::default();
    let c = [budget(
        "tokens",
        BudgetMetric::Tokens,
        agent("a"),
        100,
        1_000,
        Some(60),
    )];
    let id = state
        .check_and_charge(&c, at(0))
        .expect("fits")
        .id
        .expect("reservation");
    assert!(state.check_and_charge(&c, at(61)).is_ok()); // a new window with 100 in it
    let report = state
        .commit(
            id,
            Usage {
                tokens: Some(900),
                cost_micro_usd: None,
            },
            at(62),
        )
        .expect("commit");
    assert_eq!(
        report,
        CommitReport {
            adjusted: 0,
            unchanged: 1
        }
    );
    assert_eq!(state.usage(&c[0].key, at(62)), 100);
}

#[test]
fn prune_forgets_ended_windows_and_idle_sessions() {
    let state = LimitState::new(LimitsConfig {
        session_idle_ttl: Some(Duration::from_secs(100)),
        ..LimitsConfig::default()
    });
    assert!(
        state
            .check_and_charge(&[rate(5, 60, agent("a"))], at(0))
            .is_ok()
    );
    let session = budget(
        "s",
        BudgetMetric::ToolCalls,
        Subject::Session("s1".into()),
        1,
        5,
        None,
    );
    let lifetime = budget("l", BudgetMetric::ToolCalls, tenant("t"), 1, 5, None);
    assert!(
        state
            .check_and_charge(&[session.clone(), lifetime.clone()], at(0))
            .is_ok()
    );
    assert_eq!(state.counters(), 3);
    assert_eq!(state.prune(at(59)), 0);
    assert_eq!(state.prune(at(60)), 1); // the rate limit window ended
    assert_eq!(state.prune(at(100)), 1); // the idle session
    assert_eq!(state.counters(), 1);
    assert_eq!(state.usage(&lifetime.key, at(1_000_000)), 1);
}

#[test]
fn snapshot_restore_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("limits.json");
    let state = LimitState::default();
    let r = rate(5, 3600, Subject::agent_tool("a", "refund"));
    let tokens = budget(
        "tokens",
        BudgetMetric::Tokens,
        tenant("t1"),
        100,
        1_000,
        None,
    );
    for i in 0..3 {
        assert!(
            state
                .check_and_charge(&[r.clone(), tokens.clone()], at(i))
                .is_ok()
        );
    }
    let committed = state
        .check_and_charge(std::slice::from_ref(&tokens), at(3))
        .expect("fits")
        .id
        .expect("id");
    assert!(
        state
            .commit(
                committed,
                Usage {
                    tokens: Some(1),
                    cost_micro_usd: None
                },
                at(4)
            )
            .is_ok()
    );
    let open = state
        .check_and_charge(std::slice::from_ref(&tokens), at(5))
        .expect("fits")
        .id
        .expect("id");
    state.persist(&path, at(6)).expect("persist");

    let restored = LimitState::load(LimitsConfig::default(), &path, at(7)).expect("load");
    assert_eq!(restored.usage(&r.key, at(7)), 3);
    assert_eq!(restored.usage(&tokens.key, at(7)), 401);
    assert_eq!(restored.snapshot(at(6)), state.snapshot(at(6)));
    // Reservations survive: the committed one stays committed, the open one can be committed.
    assert_eq!(
        restored
            .commit(committed, Usage::default(), at(8))
            .unwrap_err(),
        CommitError::AlreadyCommitted(committed)
    );
    assert!(
        restored
            .commit(
                open,
                Usage {
                    tokens: Some(0),
                    cost_micro_usd: None
                },
                at(8)
            )
            .is_ok()
    );
    assert_eq!(restored.usage(&tokens.key, at(8)), 301);
    // New reservation ids never collide with restored ones.
    let fresh = restored
        .check_and_charge(std::slice::from_ref(&tokens), at(9))
        .expect("fits")
        .id
        .expect("id");
    assert!(fresh > open);
    // The window keeps its opening time across the restart.
    assert!(
        restored
            .check_and_charge(&[r.clone(), r.clone()], at(10))
            .is_ok()
    );
    assert!(
        restored
            .check_and_charge(std::slice::from_ref(&r), at(3599))
            .is_err()
    );
    assert!(
        restored
            .check_and_charge(std::slice::from_ref(&r), at(3600))
            .is_ok()
    );
}

#[test]
fn windows_that_ended_while_down_are_expired_on_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("limits.json");
    let state = LimitState::default();
    let short = rate(1, 60, agent("a"));
    let long = rate(1, 3600, agent("b"));
    assert!(
        state
            .check_and_charge(&[short.clone(), long.clone()], at(0))
            .is_ok()
    );
    state.persist(&path, at(1)).expect("persist");
    let restored = LimitState::load(LimitsConfig::default(), &path, at(120)).expect("load");
    assert_eq!(restored.counters(), 1, "the 60 s window ended while down");
    assert!(
        restored
            .check_and_charge(std::slice::from_ref(&short), at(120))
            .is_ok()
    );
    assert!(
        restored
            .check_and_charge(std::slice::from_ref(&long), at(120))
            .is_err()
    );
}

#[test]
fn missing_file_gives_empty_state_and_corrupt_file_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("limits.json");
    let state = LimitState::load(LimitsConfig::default(), &path, at(0)).expect("no file is fine");
    assert_eq!(state.counters(), 0);

    for (bytes, needle) in [
        (&b"{\"version\":1,\"takenAt\":"[..], "corrupt"),
        (&b"not json"[..], "corrupt"),
        (&b"{}"[..], "corrupt"),
        (&b"{\"version\":1,\"takenAt\":\"2027-01-01T00:00:00Z\",\"nextReservationId\":1,\"counters\":[{\"used\":-1}],\"reservations\":[]}"[..], "corrupt"),
        (&b"{\"version\":99}"[..], "version 99"),
    ] {
        std::fs::write(&path, bytes).expect("write");
        let err = LimitState::load(LimitsConfig::default(), &path, at(0)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(needle), "{msg}");
        assert!(msg.contains("limits.json"), "{msg}");
    }
}

#[test]
fn persist_is_atomic_and_leaves_no_temporary_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("limits.json");
    let state = LimitState::default();
    assert!(
        state
            .check_and_charge(&[rate(5, 60, agent("a"))], at(0))
            .is_ok()
    );
    state.persist(&path, at(0)).expect("persist");
    state.persist(&path, at(1)).expect("persist again");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("limits.json")]);
    // Persisting into a directory that does not exist fails cleanly.
    let err = state
        .persist(&dir.path().join("missing/limits.json"), at(2))
        .unwrap_err();
    assert!(matches!(err, PersistError::Io { .. }), "{err}");
}

#[test]
fn persister_writes_every_interval_and_on_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("limits.json");
    let state = Arc::new(LimitState::default());
    let c = [rate(100, 3600, agent("a"))];
    let persister =
        Persister::start(state.clone(), path.clone(), Duration::from_millis(20)).expect("start");
    assert!(state.check_and_charge(&c, Utc::now()).is_ok());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while persister.writes() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(persister.writes() >= 1);
    assert_eq!(persister.last_error(), None);
    assert!(state.check_and_charge(&c, Utc::now()).is_ok());
    persister.stop().expect("final write");
    let restored = LimitState::load(LimitsConfig::default(), &path, Utc::now()).expect("load");
    assert_eq!(
        restored.usage(&c[0].key, Utc::now()),
        2,
        "the stop wrote the last charge"
    );
}

#[test]
fn exactly_limit_calls_are_allowed_under_contention() {
    const LIMIT: u64 = 1_000;
    let state = Arc::new(LimitState::new(LimitsConfig {
        shards: 8,
        ..LimitsConfig::default()
    }));
    let allowed = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (state, allowed) = (state.clone(), allowed.clone());
            std::thread::spawn(move || {
                // Every call charges a shared tenant limit and a per-agent limit that lives in
                // another shard, exercising the multi-shard locking order.
                let shared = rate(LIMIT, 3600, tenant("acme"));
                let own = rate(u64::MAX, 3600, agent(&format!("agent-{t}")));
                let calls = [own, shared];
                for _ in 0..400 {
                    if state.check_and_charge(&calls, at(0)).is_ok() {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    assert_eq!(allowed.load(Ordering::Relaxed), LIMIT);
    assert_eq!(
        state.usage(&rate(LIMIT, 3600, tenant("acme")).key, at(0)),
        LIMIT
    );
    let per_agent: u64 = (0..8)
        .map(|t| {
            state.usage(
                &rate(u64::MAX, 3600, agent(&format!("agent-{t}"))).key,
                at(0),
            )
        })
        .sum();
    assert_eq!(
        per_agent, LIMIT,
        "refused calls charged no per-agent counter"
    );
}

#[test]
fn exceeded_messages_name_the_limit() {
    let state = LimitState::default();
    let c = [rate(1, 60, tenant("acme"))];
    assert!(state.check_and_charge(&c, at(0)).is_ok());
    let msg = state.check_and_charge(&c, at(1)).unwrap_err().to_string();
    assert!(
        msg.contains("rate limit \"calls\" of policy \"ns/p\" for tenant \"acme\""),
        "{msg}"
    );
    assert!(msg.contains("1 of 1 calls"), "{msg}");
    let b = [budget(
        "cost",
        BudgetMetric::CostMicroUsd,
        tenant("acme"),
        5,
        4,
        None,
    )];
    let msg = state.check_and_charge(&b, at(1)).unwrap_err().to_string();
    assert!(
        msg.contains("budget \"cost\"") && msg.contains("micro-USD"),
        "{msg}"
    );
}
