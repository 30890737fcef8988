//! The class checks: is an identity's request inside its class's ceiling?
//!
//! Pure functions over the class, the identity's spec and its namespace's labels. A refusal is a
//! [`Denial`] with a stable reason and a message that names the offending grant and says what to
//! change; it becomes the identity's `Ready=False` condition.

use std::{collections::BTreeMap, time::Duration};

use kube::core::{Selector, SelectorExt};
use overseer_crds::agents::{
    EphemeralIdentityClassSpec, EphemeralIdentitySpec, GrantRule, RoleKind, RoleRef,
};

/// Stable condition reasons of the identity controller.
pub mod reason {
    /// The class does not exist (yet).
    pub const CLASS_NOT_FOUND: &str = "ClassNotFound";
    /// The identity's namespace may not use the class.
    pub const NAMESPACE_NOT_ALLOWED: &str = "NamespaceNotAllowed";
    /// The TTL is not positive or exceeds the class's `maxTtl`.
    pub const TTL_OUT_OF_RANGE: &str = "TtlOutOfRange";
    /// An audience is not in the class's `allowedAudiences`.
    pub const AUDIENCE_NOT_ALLOWED: &str = "AudienceNotAllowed";
    /// A role is not in the class's `allowedRoles`.
    pub const ROLE_NOT_ALLOWED: &str = "RoleNotAllowed";
    /// A rule is not covered by the class's `allowedRules`.
    pub const RULE_NOT_ALLOWED: &str = "RuleNotAllowed";
    /// The class's `namespaceSelector` cannot be evaluated.
    pub const INVALID_CLASS: &str = "InvalidClass";
    /// An object with one of the identity's generated names exists and is not the identity's.
    pub const NAME_CONFLICT: &str = "NameConflict";
    /// The class requires an approval and none is recorded.
    pub const APPROVAL_REQUIRED: &str = "ApprovalRequired";
    /// A reviewer denied the identity's approval request.
    pub const APPROVAL_DENIED: &str = "ApprovalDenied";
    /// Nobody reviewed the approval request before it expired.
    pub const APPROVAL_EXPIRED: &str = "ApprovalExpired";
    /// Objects are being created and the token requested.
    pub const ISSUING: &str = "Issuing";
    /// The token is issued and valid.
    pub const ISSUED: &str = "Issued";
    /// The TTL (or the token's real expiry) passed.
    pub const EXPIRED: &str = "Expired";
    /// `spec.revoked` was set.
    pub const REVOKED: &str = "Revoked";
    /// The identity is being deleted.
    pub const DELETED: &str = "Deleted";
    /// The class of an active identity was deleted.
    pub const CLASS_DELETED: &str = "ClassDeleted";
    /// The class of an active identity changed so that it no longer allows the identity.
    pub const CLASS_CHANGED: &str = "ClassChanged";
    /// The Secret holding the token disappeared (or lost its token), so the token is dead.
    pub const TOKEN_SECRET_DELETED: &str = "TokenSecretDeleted";
}

/// A refusal: the reason (UpperCamelCase) and a message that names what to change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// One of [`reason`].
    pub reason: &'static str,
    /// What is wrong and what to change.
    pub message: String,
}

impl Denial {
    fn new(reason: &'static str, message: String) -> Self {
        Self { reason, message }
    }
}

/// A request the class allows: what to issue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// How long the identity lives.
    pub ttl: Duration,
    /// The token's audiences; empty means the API server's default audience.
    pub audiences: Vec<String>,
    /// Vetted roles to bind.
    pub roles: Vec<RoleRef>,
    /// Rules for the identity's own Role.
    pub rules: Vec<GrantRule>,
}

/// Whether deciding if `namespace` may use the class needs the namespace's labels: only when the
/// class has a `namespaceSelector` and does not list the namespace by name.
pub fn needs_namespace_labels(class: &EphemeralIdentityClassSpec, namespace: &str) -> bool {
    class.namespace_selector.is_some() && !class.namespaces.iter().any(|n| n == namespace)
}

/// Check every limit of the class `class_name` against the identity `spec` in `namespace`
/// (whose labels are `namespace_labels`, when known). The first violation wins.
pub fn validate(
    class_name: &str,
    class: &EphemeralIdentityClassSpec,
    namespace: &str,
    namespace_labels: Option<&BTreeMap<String, String>>,
    spec: &EphemeralIdentitySpec,
) -> Result<Allowed, Denial> {
    check_namespace(class_name, class, namespace, namespace_labels)?;
    let ttl = resolve_ttl(class_name, class, spec.ttl)?;
    let audiences = check_audiences(
        class_name,
        class,
        spec.audiences.as_deref().unwrap_or_default(),
    )?;
    check_roles(class_name, class, &spec.grants.roles)?;
    check_rules(class_name, class, &spec.grants.rules)?;
    Ok(Allowed {
        ttl,
        audiences,
        roles: spec.grants.roles.clone(),
        rules: spec.grants.rules.clone(),
    })
}

/// The namespace must be listed in `namespaces` or selected by `namespaceSelector`; a class with
/// neither admits no namespace.
pub fn check_namespace(
    class_name: &str,
    class: &EphemeralIdentityClassSpec,
    namespace: &str,
    labels: Option<&BTreeMap<String, String>>,
) -> Result<(), Denial> {
    if class.namespaces.iter().any(|n| n == namespace) {
        return Ok(());
    }
    let denied = || {
        Denial::new(
            reason::NAMESPACE_NOT_ALLOWED,
            format!(
                "namespace {namespace:?} may not use class {class_name:?}: it is neither listed in \
                 spec.namespaces nor selected by spec.namespaceSelector; ask an admin to allow it or use another class"
            ),
        )
    };
    let Some(selector) = &class.namespace_selector else {
        return Err(denied());
    };
    let selector = Selector::try_from(selector.clone()).map_err(|e| {
        Denial::new(
            reason::INVALID_CLASS,
            format!("class {class_name:?} has an invalid namespaceSelector ({e}); ask an admin to fix it"),
        )
    })?;
    let empty = BTreeMap::new();
    if selector.matches(labels.unwrap_or(&empty)) {
        Ok(())
    } else {
        Err(denied())
    }
}

/// The identity's TTL: the requested one, else the class's `defaultTtl`, else its `maxTtl`; it
/// must be positive and at most `maxTtl`.
pub fn resolve_ttl(
    class_name: &str,
    class: &EphemeralIdentityClassSpec,
    requested: Option<kube::core::Duration>,
) -> Result<Duration, Denial> {
    if class.max_ttl.is_negative() {
        return Err(Denial::new(
            reason::INVALID_CLASS,
            format!("class {class_name:?} has a negative maxTtl; ask an admin to fix it"),
        ));
    }
    let max: Duration = class.max_ttl.into();
    let chosen = requested.or(class.default_ttl).unwrap_or(class.max_ttl);
    let ttl: Duration = chosen.into();
    if chosen.is_negative() || ttl.is_zero() {
        return Err(Denial::new(
            reason::TTL_OUT_OF_RANGE,
            format!(
                "ttl {}{} must be positive (at most {} for class {class_name:?})",
                if chosen.is_negative() { "-" } else { "" },
                go_duration(ttl),
                go_duration(max)
            ),
        ));
    }
    if ttl > max {
        return Err(Denial::new(
            reason::TTL_OUT_OF_RANGE,
            format!(
                "ttl {} exceeds the maxTtl {} of class {class_name:?}; ask for at most {}",
                go_duration(ttl),
                go_duration(max),
                go_duration(max)
            ),
        ));
    }
    Ok(ttl)
}

/// Every requested audience must be in `allowedAudiences` (a class without any allows only the
/// API server's default audience, i.e. no explicit audience). Duplicates are dropped.
pub fn check_audiences(
    class_name: &str,
    class: &EphemeralIdentityClassSpec,
    requested: &[String],
) -> Result<Vec<String>, Denial> {
    let mut out: Vec<String> = Vec::with_capacity(requested.len());
    for audience in requested {
        if !class.allowed_audiences.contains(audience) {
            let allowed = if class.allowed_audiences.is_empty() {
                "none (only the API server's default audience; omit spec.audiences)".to_owned()
            } else {
                format!("{:?}", class.allowed_audiences)
            };
            return Err(Denial::new(
                reason::AUDIENCE_NOT_ALLOWED,
                format!(
                    "audience {audience:?} is not allowed by class {class_name:?}; allowed: {allowed}"
                ),
            ));
        }
        if !out.contains(audience) {
            out.push(audience.clone());
        }
    }
    Ok(out)
}

/// Every requested role must be one of the class's `allowedRoles` (same kind and name).
pub fn check_roles(
    class_name: &str,
    class: &EphemeralIdentityClassSpec,
    requested: &[RoleRef],
) -> Result<(), Denial> {
    match requested.iter().find(|r| !class.allowed_roles.contains(r)) {
        None => Ok(()),
        Some(role) => Err(Denial::new(
            reason::ROLE_NOT_ALLOWED,
            format!(
                "{} {:?} is not in the allowedRoles of class {class_name:?}; remove it from spec.grants.roles",
                kind_name(role.kind),
                role.name
            ),
        )),
    }
}

/// Every requested rule must be covered by the class's `allowedRules`: each combination of API
/// group, resource and verb it asks for is allowed by a class rule (`*` matches anything there,
/// `*/sub` any resource's subresource `sub`), and the resource names it asks for are all allowed
/// by such rules (a class rule without `resourceNames` allows every name; a requested rule
/// without them asks for every name). Requested rules may not use `*`.
pub fn check_rules(
    class_name: &str,
    class: &EphemeralIdentityClassSpec,
    requested: &[GrantRule],
) -> Result<(), Denial> {
    for (index, rule) in requested.iter().enumerate() {
        let describe = || {
            format!(
                "spec.grants.rules[{index}] (apiGroups {:?}, resources {:?}, verbs {:?}{})",
                rule.api_groups,
                rule.resources,
                rule.verbs,
                if rule.resource_names.is_empty() {
                    String::new()
                } else {
                    format!(", resourceNames {:?}", rule.resource_names)
                }
            )
        };
        let wildcard = rule
            .api_groups
            .iter()
            .chain(&rule.resources)
            .chain(&rule.verbs)
            .chain(&rule.resource_names);
        if let Some(w) = wildcard.into_iter().find(|s| s.contains('*')) {
            return Err(Denial::new(
                reason::RULE_NOT_ALLOWED,
                format!(
                    "{} uses the wildcard {w:?}, which only a class may use; name exactly what is needed",
                    describe()
                ),
            ));
        }
        for group in &rule.api_groups {
            for resource in &rule.resources {
                for verb in &rule.verbs {
                    let matching: Vec<&GrantRule> = class
                        .allowed_rules
                        .iter()
                        .filter(|a| {
                            matches_plain(&a.api_groups, group)
                                && matches_resource(&a.resources, resource)
                                && matches_plain(&a.verbs, verb)
                        })
                        .collect();
                    let what = format!("verb {verb:?} on {:?}", qualified(group, resource));
                    if matching.is_empty() {
                        return Err(Denial::new(
                            reason::RULE_NOT_ALLOWED,
                            format!(
                                "{}: {what} is not allowed by class {class_name:?}",
                                describe()
                            ),
                        ));
                    }
                    if matching.iter().any(|a| a.resource_names.is_empty()) {
                        continue;
                    }
                    if rule.resource_names.is_empty() {
                        return Err(Denial::new(
                            reason::RULE_NOT_ALLOWED,
                            format!(
                                "{}: class {class_name:?} allows {what} only for certain resourceNames; list the names needed",
                                describe()
                            ),
                        ));
                    }
                    if let Some(name) = rule
                        .resource_names
                        .iter()
                        .find(|n| !matching.iter().any(|a| a.resource_names.contains(n)))
                    {
                        return Err(Denial::new(
                            reason::RULE_NOT_ALLOWED,
                            format!(
                                "{}: {what} for the name {name:?} is not allowed by class {class_name:?}",
                                describe()
                            ),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// A duration the way Go (and so `kubectl`) writes it: `1h30m0s`, `90ms`.
pub fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    if secs == 0 {
        return match nanos {
            0 => "0s".to_owned(),
            n if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
            n => format!("{}ns", n),
        };
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    match (h, m) {
        (0, 0) => format!("{s}{frac}s"),
        (0, _) => format!("{m}m{s}{frac}s"),
        _ => format!("{h}h{m}m{s}{frac}s"),
    }
}

fn matches_plain(allowed: &[String], requested: &str) -> bool {
    allowed.iter().any(|a| a == "*" || a == requested)
}

/// RBAC's resource matching: `*`, the exact `resource[/subresource]`, or `*/subresource`.
fn matches_resource(allowed: &[String], requested: &str) -> bool {
    let sub = requested.split_once('/').map(|(_, sub)| sub);
    allowed.iter().any(|a| {
        a == "*"
            || a == requested
            || matches!((a.strip_prefix("*/"), sub), (Some(x), Some(s)) if x == s)
    })
}

fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_owned()
    } else {
        format!("{resource}.{group}")
    }
}

fn kind_name(kind: RoleKind) -> &'static str {
    match kind {
        RoleKind::ClusterRole => "ClusterRole",
        RoleKind::Role => "Role",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
    use overseer_crds::agents::Grants;

    fn d(s: &str) -> kube::core::Duration {
        s.parse().expect("duration")
    }

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> GrantRule {
        let v = |xs: &[&str]| xs.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        GrantRule {
            api_groups: v(groups),
            resources: v(resources),
            verbs: v(verbs),
            resource_names: v(names),
        }
    }

    fn class() -> EphemeralIdentityClassSpec {
        EphemeralIdentityClassSpec {
            max_ttl: d("1h"),
            default_ttl: Some(d("15m")),
            namespace_selector: None,
            namespaces: vec!["agents".into()],
            allowed_roles: vec![RoleRef {
                kind: RoleKind::ClusterRole,
                name: "view".into(),
            }],
            allowed_rules: vec![
                rule(&[""], &["pods", "pods/log"], &["get", "list"], &[]),
                rule(&["apps"], &["*"], &["get"], &[]),
                rule(
                    &[""],
                    &["configmaps"],
                    &["get", "update"],
                    &["settings", "flags"],
                ),
                rule(&["*"], &["*/scale"], &["patch"], &[]),
            ],
            allowed_audiences: vec!["mcp-gateway".into(), "vault".into()],
            require_approval: false,
            approval: None,
            record_retention: None,
        }
    }

    fn spec(rules: Vec<GrantRule>) -> EphemeralIdentitySpec {
        EphemeralIdentitySpec {
            class_name: "c".into(),
            agent: "a".into(),
            grants: Grants {
                roles: vec![],
                rules,
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_request_inside_the_ceiling_is_allowed() {
        let mut s = spec(vec![
            rule(&[""], &["pods"], &["get"], &[]),
            rule(&[""], &["pods/log"], &["list"], &[]),
            rule(&["apps"], &["deployments"], &["get"], &["web"]),
            rule(&[""], &["configmaps"], &["update"], &["flags"]),
            rule(&["apps"], &["deployments/scale"], &["patch"], &[]),
        ]);
        s.grants.roles = vec![RoleRef {
            kind: RoleKind::ClusterRole,
            name: "view".into(),
        }];
        s.audiences = Some(vec!["vault".into(), "vault".into()]);
        let allowed = validate("c", &class(), "agents", None, &s).expect("allowed");
        assert_eq!(allowed.ttl, Duration::from_secs(15 * 60));
        assert_eq!(allowed.audiences, vec!["vault".to_owned()]);
        assert_eq!(allowed.rules.len(), 5);
        assert_eq!(allowed.roles.len(), 1);
    }

    #[test]
    fn ttl_defaults_and_limits() {
        let mut c = class();
        assert_eq!(resolve_ttl("c", &c, None), Ok(Duration::from_secs(900)));
        assert_eq!(
            resolve_ttl("c", &c, Some(d("90s"))),
            Ok(Duration::from_secs(90))
        );
        assert_eq!(
            resolve_ttl("c", &c, Some(d("1h"))),
            Ok(Duration::from_secs(3600))
        );
        c.default_ttl = None;
        assert_eq!(resolve_ttl("c", &c, None), Ok(Duration::from_secs(3600)));
        for bad in ["1h1s", "0s", "-5m"] {
            let denial = resolve_ttl("c", &c, Some(d(bad))).expect_err(bad);
            assert_eq!(denial.reason, reason::TTL_OUT_OF_RANGE, "{bad}");
            assert!(denial.message.contains("\"c\""), "{}", denial.message);
        }
        let denial = resolve_ttl("c", &c, Some(d("2h"))).expect_err("too long");
        assert!(
            denial
                .message
                .contains("ttl 2h0m0s exceeds the maxTtl 1h0m0s"),
            "{}",
            denial.message
        );
        let denial = resolve_ttl("c", &c, Some(d("-5m"))).expect_err("negative");
        assert!(
            denial.message.contains("ttl -5m0s must be positive"),
            "{}",
            denial.message
        );
    }

    #[test]
    fn durations_are_written_like_go() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(go_duration(Duration::from_secs(45)), "45s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(7 * 24 * 3600)), "168h0m0s");
    }

    #[test]
    fn namespaces_by_name_or_selector() {
        let mut c = class();
        assert!(check_namespace("c", &c, "agents", None).is_ok());
        assert!(!needs_namespace_labels(&c, "other"));
        let denial = check_namespace("c", &c, "other", None).expect_err("not listed");
        assert_eq!(denial.reason, reason::NAMESPACE_NOT_ALLOWED);
        assert!(denial.message.contains("\"other\""));

        c.namespace_selector = Some(LabelSelector {
            match_labels: Some([("tier".to_owned(), "agents".to_owned())].into()),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "frozen".into(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
        });
        assert!(needs_namespace_labels(&c, "other"));
        assert!(!needs_namespace_labels(&c, "agents"));
        let labels: BTreeMap<String, String> = [("tier".to_owned(), "agents".to_owned())].into();
        assert!(check_namespace("c", &c, "other", Some(&labels)).is_ok());
        let mut frozen = labels.clone();
        frozen.insert("frozen".into(), "yes".into());
        assert!(check_namespace("c", &c, "other", Some(&frozen)).is_err());
        assert!(check_namespace("c", &c, "other", None).is_err());

        c.namespace_selector = Some(LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "x".into(),
                operator: "Sometimes".into(),
                values: None,
            }]),
        });
        let denial =
            check_namespace("c", &c, "other", Some(&labels)).expect_err("invalid selector");
        assert_eq!(denial.reason, reason::INVALID_CLASS);

        c.namespaces.clear();
        c.namespace_selector = None;
        assert!(
            check_namespace("c", &c, "agents", None).is_err(),
            "deny by default"
        );
    }

    #[test]
    fn audiences_must_be_allowed() {
        let mut c = class();
        assert_eq!(check_audiences("c", &c, &[]), Ok(vec![]));
        let denial = check_audiences("c", &c, &["vault".into(), "s3".into()]).expect_err("s3");
        assert_eq!(denial.reason, reason::AUDIENCE_NOT_ALLOWED);
        assert!(denial.message.contains("\"s3\""), "{}", denial.message);
        c.allowed_audiences.clear();
        let denial = check_audiences("c", &c, &["vault".into()]).expect_err("none allowed");
        assert!(
            denial.message.contains("default audience"),
            "{}",
            denial.message
        );
    }

    #[test]
    fn roles_must_be_vetted_by_kind_and_name() {
        let c = class();
        let ok = [RoleRef {
            kind: RoleKind::ClusterRole,
            name: "view".into(),
        }];
        assert!(check_roles("c", &c, &ok).is_ok());
        for bad in [
            RoleRef {
                kind: RoleKind::Role,
                name: "view".into(),
            },
            RoleRef {
                kind: RoleKind::ClusterRole,
                name: "admin".into(),
            },
        ] {
            let denial =
                check_roles("c", &c, &[ok[0].clone(), bad.clone()]).expect_err("not vetted");
            assert_eq!(denial.reason, reason::ROLE_NOT_ALLOWED);
            assert!(
                denial.message.contains(&format!("{:?}", bad.name)),
                "{}",
                denial.message
            );
        }
    }

    #[test]
    fn rules_outside_the_class_are_refused_naming_the_grant() {
        let c = class();
        let cases = [
            (
                rule(&[""], &["pods"], &["delete"], &[]),
                "verb \"delete\" on \"pods\"",
            ),
            (
                rule(&[""], &["secrets"], &["get"], &[]),
                "verb \"get\" on \"secrets\"",
            ),
            (rule(&["batch"], &["jobs"], &["get"], &[]), "\"jobs.batch\""),
            (
                rule(&["apps"], &["deployments"], &["*"], &[]),
                "wildcard \"*\"",
            ),
            (
                rule(&[""], &["pods/*"], &["get"], &[]),
                "wildcard \"pods/*\"",
            ),
            (
                rule(&[""], &["configmaps"], &["get"], &[]),
                "only for certain resourceNames",
            ),
            (
                rule(&[""], &["configmaps"], &["get"], &["settings", "db"]),
                "name \"db\"",
            ),
            (rule(&[""], &["pods/exec"], &["get"], &[]), "\"pods/exec\""),
            (
                rule(&["apps"], &["deployments/scale"], &["update"], &[]),
                "verb \"update\"",
            ),
        ];
        for (bad, expected) in cases {
            let s = spec(vec![rule(&[""], &["pods"], &["get"], &[]), bad.clone()]);
            let denial = validate("c", &class(), "agents", None, &s).expect_err(expected);
            assert_eq!(denial.reason, reason::RULE_NOT_ALLOWED, "{bad:?}");
            assert!(
                denial.message.contains("spec.grants.rules[1]"),
                "{}",
                denial.message
            );
            assert!(
                denial.message.contains(expected),
                "{expected}: {}",
                denial.message
            );
        }
        assert!(
            check_rules(
                "c",
                &c,
                &[rule(
                    &[""],
                    &["configmaps"],
                    &["get", "update"],
                    &["settings", "flags"]
                )]
            )
            .is_ok()
        );
    }

    #[test]
    fn coverage_may_combine_class_rules() {
        let mut c = class();
        c.allowed_rules = vec![
            rule(&[""], &["pods"], &["get"], &[]),
            rule(&[""], &["pods"], &["list"], &[]),
            rule(&[""], &["services"], &["get"], &["a"]),
            rule(&[""], &["services"], &["get"], &["b"]),
        ];
        assert!(check_rules("c", &c, &[rule(&[""], &["pods"], &["get", "list"], &[])]).is_ok());
        assert!(
            check_rules(
                "c",
                &c,
                &[rule(&[""], &["services"], &["get"], &["a", "b"])]
            )
            .is_ok()
        );
        assert!(
            check_rules(
                "c",
                &c,
                &[rule(&[""], &["services"], &["get"], &["a", "c"])]
            )
            .is_err()
        );
    }

    #[test]
    fn the_first_violation_in_check_order_is_reported() {
        let mut s = spec(vec![rule(&[""], &["secrets"], &["get"], &[])]);
        s.ttl = Some(d("2h"));
        let denial = validate("c", &class(), "elsewhere", None, &s).expect_err("denied");
        assert_eq!(denial.reason, reason::NAMESPACE_NOT_ALLOWED);
        let denial = validate("c", &class(), "agents", None, &s).expect_err("denied");
        assert_eq!(denial.reason, reason::TTL_OUT_OF_RANGE);
    }
}
