//! Compiled matchers: name globs, agent subjects (with label selectors) and time windows.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use overseer_crds::agents::{AgentSubjects, TimeWindow, Weekday};

use crate::request::Principal;

/// Whether a pattern uses glob syntax (otherwise it is matched exactly).
pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

/// Compile one glob: `*` matches any run of characters (`/` included), `?` one character.
pub(crate) fn glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(false)
        .backslash_escape(true)
        .build()
        .map_err(|e| format!("invalid glob {pattern:?}: {}", e.kind()))
}

/// A set of names and globs; matches when any entry matches.
#[derive(Debug, Clone, Default)]
pub(crate) struct PatternSet {
    exact: HashSet<String>,
    globs: Option<GlobSet>,
}

impl PatternSet {
    /// Compile patterns; the error names the index of the bad one.
    pub(crate) fn new<'a>(
        patterns: impl IntoIterator<Item = &'a String>,
    ) -> Result<Self, (usize, String)> {
        let mut exact = HashSet::new();
        let mut builder = GlobSetBuilder::new();
        let mut any_glob = false;
        for (i, p) in patterns.into_iter().enumerate() {
            if is_glob(p) {
                builder.add(glob(p).map_err(|e| (i, e))?);
                any_glob = true;
            } else {
                exact.insert(p.clone());
            }
        }
        let globs = if any_glob {
            Some(builder.build().map_err(|e| (0, e.to_string()))?)
        } else {
            None
        };
        Ok(Self { exact, globs })
    }

    pub(crate) fn is_match(&self, name: &str) -> bool {
        self.exact.contains(name) || self.globs.as_ref().is_some_and(|g| g.is_match(name))
    }
}

/// A tool filter: every tool, or those matching the patterns.
#[derive(Debug, Clone)]
pub(crate) enum ToolFilter {
    All,
    Some(PatternSet),
}

impl ToolFilter {
    pub(crate) fn new(tools: &[String]) -> Result<Self, (usize, String)> {
        if tools.is_empty() {
            Ok(Self::All)
        } else {
            PatternSet::new(tools).map(Self::Some)
        }
    }

    pub(crate) fn is_match(&self, tool: &str) -> bool {
        match self {
            Self::All => true,
            Self::Some(p) => p.is_match(tool),
        }
    }
}

/// One `matchExpressions` entry of a label selector.
#[derive(Debug, Clone)]
enum Requirement {
    In(String, HashSet<String>),
    NotIn(String, HashSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A compiled Kubernetes label selector.
#[derive(Debug, Clone, Default)]
pub(crate) struct Selector {
    labels: Vec<(String, String)>,
    requirements: Vec<Requirement>,
}

impl Selector {
    pub(crate) fn new(sel: &LabelSelector) -> Result<Self, String> {
        let labels = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut requirements = Vec::new();
        for (i, r) in sel.match_expressions.iter().flatten().enumerate() {
            let values: HashSet<String> = r.values.iter().flatten().cloned().collect();
            let req = match r.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(format!(
                        "matchExpressions[{i}]: operator {} needs at least one value",
                        r.operator
                    ));
                }
                "In" => Requirement::In(r.key.clone(), values),
                "NotIn" => Requirement::NotIn(r.key.clone(), values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(format!(
                        "matchExpressions[{i}]: operator {} takes no values",
                        r.operator
                    ));
                }
                "Exists" => Requirement::Exists(r.key.clone()),
                "DoesNotExist" => Requirement::DoesNotExist(r.key.clone()),
                other => {
                    return Err(format!(
                        "matchExpressions[{i}]: unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"
                    ));
                }
            };
            requirements.push(req);
        }
        Ok(Self {
            labels,
            requirements,
        })
    }

    pub(crate) fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| match r {
                Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                Requirement::Exists(k) => labels.contains_key(k),
                Requirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

/// The agents a policy governs, compiled.
#[derive(Debug, Clone, Default)]
pub(crate) struct Subjects {
    /// `(namespace, name)`; `None` namespace: any namespace; name `*`: any ServiceAccount.
    service_accounts: Vec<(Option<String>, String)>,
    ephemeral_identities: HashSet<String>,
    spiffe_ids: Option<PatternSet>,
    agent_ids: Option<PatternSet>,
    selector: Option<Selector>,
}

impl Subjects {
    /// Compile subjects. `own_namespace` is the namespace of a namespaced policy. Errors carry
    /// the field path below `spec.subjects`.
    pub(crate) fn new(
        s: &AgentSubjects,
        own_namespace: Option<&str>,
    ) -> Result<Self, (String, String)> {
        let mut service_accounts = Vec::new();
        for (i, sa) in s.service_accounts.iter().enumerate() {
            let ns = match (own_namespace, &sa.namespace) {
                (Some(own), Some(ns)) if ns != own => {
                    return Err((
                        format!("serviceAccounts[{i}].namespace"),
                        format!(
                            "a namespaced AgentPolicy only governs ServiceAccounts of its own namespace {own:?}, not {ns:?}; use a ClusterAgentPolicy"
                        ),
                    ));
                }
                (Some(own), _) => Some(own.to_owned()),
                (None, ns) => ns.clone(),
            };
            if sa.name.is_empty() {
                return Err((
                    format!("serviceAccounts[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            service_accounts.push((ns, sa.name.clone()));
        }
        let patterns =
            |field: &str, list: &[String]| -> Result<Option<PatternSet>, (String, String)> {
                if list.is_empty() {
                    return Ok(None);
                }
                PatternSet::new(list)
                    .map(Some)
                    .map_err(|(i, e)| (format!("{field}[{i}]"), e))
            };
        let spiffe_ids = patterns("spiffeIds", &s.spiffe_ids)?;
        let agent_ids = patterns("agentIds", &s.agent_ids)?;
        let selector = s
            .agent_selector
            .as_ref()
            .map(Selector::new)
            .transpose()
            .map_err(|e| ("agentSelector".to_string(), e))?;
        Ok(Self {
            service_accounts,
            ephemeral_identities: s.ephemeral_identities.iter().cloned().collect(),
            spiffe_ids,
            agent_ids,
            selector,
        })
    }

    /// Whether the principal is one of these subjects (any entry matching suffices).
    pub(crate) fn matches(&self, p: &Principal) -> bool {
        if let Some(sa) = &p.service_account
            && self.service_accounts.iter().any(|(ns, name)| {
                (name == "*" || name == sa)
                    && ns
                        .as_ref()
                        .is_none_or(|ns| p.namespace.as_ref() == Some(ns))
            })
        {
            return true;
        }
        if p.ephemeral_identity
            .as_ref()
            .is_some_and(|e| self.ephemeral_identities.contains(e))
        {
            return true;
        }
        if let (Some(set), Some(id)) = (&self.spiffe_ids, &p.spiffe_id)
            && set.is_match(id)
        {
            return true;
        }
        if self
            .agent_ids
            .as_ref()
            .is_some_and(|set| set.is_match(&p.id))
        {
            return true;
        }
        self.selector.as_ref().is_some_and(|s| s.matches(&p.labels))
    }
}

/// A compiled time window.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    pub(crate) name: String,
    /// Bit `d` set: open on day `d` (0 = Monday).
    days: u8,
    start: u32,
    end: u32,
    tz: Tz,
    pub(crate) tools: ToolFilter,
}

fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: u32 = h.parse().ok()?;
    let m: u32 = m.parse().ok()?;
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn day_bit(d: Weekday) -> u8 {
    1 << match d {
        Weekday::Mon => 0,
        Weekday::Tue => 1,
        Weekday::Wed => 2,
        Weekday::Thu => 3,
        Weekday::Fri => 4,
        Weekday::Sat => 5,
        Weekday::Sun => 6,
    }
}

impl Window {
    /// Compile a window; errors carry the field name below the window.
    pub(crate) fn new(w: &TimeWindow) -> Result<Self, (String, String)> {
        let start = parse_hhmm(&w.start).ok_or_else(|| {
            (
                "start".to_string(),
                format!("{:?} is not a time HH:MM", w.start),
            )
        })?;
        let end = parse_hhmm(&w.end).ok_or_else(|| {
            (
                "end".to_string(),
                format!("{:?} is not a time HH:MM", w.end),
            )
        })?;
        if start == end {
            return Err(("end".into(), "start and end must differ".into()));
        }
        let tz_name = w.time_zone.as_deref().unwrap_or("UTC");
        let tz: Tz = tz_name.parse().map_err(|_| {
            (
                "timeZone".to_string(),
                format!("unknown IANA time zone {tz_name:?}"),
            )
        })?;
        let days = if w.days.is_empty() {
            0x7f
        } else {
            w.days.iter().fold(0, |acc, d| acc | day_bit(*d))
        };
        let tools = ToolFilter::new(&w.tools).map_err(|(i, e)| (format!("tools[{i}]"), e))?;
        Ok(Self {
            name: w.name.clone(),
            days,
            start,
            end,
            tz,
            tools,
        })
    }

    /// Whether `now` falls inside the window. A window whose end is before its start wraps past
    /// midnight: the part after midnight belongs to the day the window opened.
    pub(crate) fn is_open(&self, now: DateTime<Utc>) -> bool {
        let local = now.with_timezone(&self.tz);
        let minute = local.hour() * 60 + local.minute();
        let day = local.weekday().num_days_from_monday();
        let open_on = |d: u32| self.days & (1 << d) != 0;
        if self.start < self.end {
            open_on(day) && self.start <= minute && minute < self.end
        } else {
            (open_on(day) && minute >= self.start) || (open_on((day + 6) % 7) && minute < self.end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use overseer_crds::agents::ServiceAccountSubject;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(days: Vec<Weekday>, start: &str, end: &str, tz: Option<&str>) -> Window {
        Window::new(&TimeWindow {
            name: "w".into(),
            days,
            start: start.into(),
            end: end.into(),
            time_zone: tz.map(Into::into),
            tools: vec![],
        })
        .unwrap()
    }

    #[test]
    fn business_hours_in_a_time_zone() {
        let w = window(
            vec![
                Weekday::Mon,
                Weekday::Tue,
                Weekday::Wed,
                Weekday::Thu,
                Weekday::Fri,
            ],
            "09:00",
            "17:00",
            Some("Europe/Berlin"),
        );
        // 2025-06-02 is a Monday; Berlin is UTC+2 in June.
        assert!(w.is_open(at("2025-06-02T07:00:00Z")));
        assert!(!w.is_open(at("2025-06-02T06:59:00Z")));
        assert!(!w.is_open(at("2025-06-02T15:00:00Z"))); // 17:00 local: end is exclusive
        assert!(w.is_open(at("2025-06-02T14:59:00Z")));
        assert!(!w.is_open(at("2025-06-07T10:00:00Z"))); // Saturday
    }

    #[test]
    fn window_wraps_past_midnight() {
        let w = window(vec![Weekday::Fri], "22:00", "02:00", None);
        // 2025-06-06 is a Friday.
        assert!(w.is_open(at("2025-06-06T23:00:00Z")));
        assert!(w.is_open(at("2025-06-07T01:59:00Z"))); // Saturday early morning belongs to Friday
        assert!(!w.is_open(at("2025-06-07T02:00:00Z")));
        assert!(!w.is_open(at("2025-06-07T23:00:00Z"))); // Saturday evening: not open
        assert!(!w.is_open(at("2025-06-06T01:00:00Z"))); // Friday early morning belongs to Thursday
    }

    #[test]
    fn bad_windows_are_rejected() {
        let bad = |start: &str, end: &str, tz: Option<&str>| {
            Window::new(&TimeWindow {
                name: "w".into(),
                start: start.into(),
                end: end.into(),
                time_zone: tz.map(Into::into),
                ..Default::default()
            })
            .unwrap_err()
            .0
        };
        assert_eq!(bad("25:00", "10:00", None), "start");
        assert_eq!(bad("10:00", "10:00", None), "end");
        assert_eq!(bad("09:00", "10:00", Some("Mars/Olympus")), "timeZone");
    }

    #[test]
    fn subjects_match_any_entry() {
        let s = Subjects::new(
            &AgentSubjects {
                service_accounts: vec![ServiceAccountSubject {
                    name: "bot".into(),
                    namespace: None,
                }],
                ephemeral_identities: vec!["eid-1".into()],
                spiffe_ids: vec!["spiffe://corp/agents/*".into()],
                agent_ids: vec!["support-*".into(), "exact".into()],
                agent_selector: Some(LabelSelector {
                    match_labels: Some([("team".to_string(), "pay".to_string())].into()),
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: "tier".into(),
                        operator: "NotIn".into(),
                        values: Some(vec!["prod".into()]),
                    }]),
                }),
            },
            Some("ns"),
        )
        .unwrap();
        let p = |f: &dyn Fn(&mut Principal)| {
            let mut p = Principal {
                id: "nobody".into(),
                ..Default::default()
            };
            f(&mut p);
            s.matches(&p)
        };
        assert!(!p(&|_| {}));
        assert!(p(&|p| {
            p.service_account = Some("bot".into());
            p.namespace = Some("ns".into());
        }));
        assert!(!p(&|p| {
            p.service_account = Some("bot".into());
            p.namespace = Some("other".into());
        }));
        assert!(p(&|p| p.ephemeral_identity = Some("eid-1".into())));
        assert!(p(&|p| p.spiffe_id = Some("spiffe://corp/agents/a/b".into())));
        assert!(!p(&|p| p.spiffe_id = Some("spiffe://evil/agents/a".into())));
        assert!(p(&|p| p.id = "support-7".into()));
        assert!(p(&|p| p.id = "exact".into()));
        assert!(p(
            &|p| p.labels = [("team".to_string(), "pay".to_string())].into()
        ));
        assert!(!p(&|p| {
            p.labels = [
                ("team".to_string(), "pay".to_string()),
                ("tier".into(), "prod".into()),
            ]
            .into()
        }));
    }

    #[test]
    fn namespaced_policy_cannot_name_other_namespaces() {
        let err = Subjects::new(
            &AgentSubjects {
                service_accounts: vec![ServiceAccountSubject {
                    name: "bot".into(),
                    namespace: Some("other".into()),
                }],
                ..Default::default()
            },
            Some("ns"),
        )
        .unwrap_err();
        assert_eq!(err.0, "serviceAccounts[0].namespace");
    }

    #[test]
    fn selector_rejects_unknown_operators() {
        let err = Selector::new(&LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "k".into(),
                operator: "Gt".into(),
                values: None,
            }]),
        })
        .unwrap_err();
        assert!(err.contains("unknown operator"), "{err}");
    }
}
