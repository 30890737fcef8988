//! Deterministic names and label values for the objects an identity owns.
//!
//! Every name is derived from the identity's name and UID, so a restart (or a second reconcile of
//! the same identity) always finds the objects it made before instead of making new ones, and an
//! identity re-created under the same name never adopts the leftovers of its predecessor.

use overseer_crds::agents::{RoleKind, RoleRef};
use sha2::{Digest, Sha256};

/// Longest part of the identity's name kept in child names.
const NAME_PART_MAX: usize = 36;
/// Hex digits of the UID hash in child names.
const HASH_LEN: usize = 10;
/// The longest label value Kubernetes accepts.
const LABEL_VALUE_MAX: usize = 63;

/// The names of the objects one identity owns, all in the identity's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildNames {
    /// The ServiceAccount (`eid-<name>-<hash>`); at most 51 characters, a DNS-1123 label.
    pub service_account: String,
    /// The Secret holding the token (`<service account>-token`).
    pub secret: String,
    /// The Role holding the identity's explicit rules (same name as the ServiceAccount).
    pub role: String,
    /// The RoleBinding of that Role (same name as the ServiceAccount).
    pub rules_binding: String,
}

impl ChildNames {
    /// The names for the identity `name` with UID `uid`.
    pub fn new(name: &str, uid: &str) -> Self {
        let part: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(NAME_PART_MAX)
            .collect();
        let part = part.trim_matches('-');
        let hash = short_hash(uid, HASH_LEN);
        let base = if part.is_empty() {
            format!("eid-{hash}")
        } else {
            format!("eid-{part}-{hash}")
        };
        Self {
            secret: format!("{base}-token"),
            role: base.clone(),
            rules_binding: base.clone(),
            service_account: base,
        }
    }

    /// The RoleBinding that binds the ServiceAccount to the vetted role `role`:
    /// `<service account>-<c|r><hash of kind and name>`.
    pub fn role_binding(&self, role: &RoleRef) -> String {
        let kind = match role.kind {
            RoleKind::ClusterRole => 'c',
            RoleKind::Role => 'r',
        };
        format!(
            "{}-{kind}{}",
            self.service_account,
            short_hash(&format!("{kind}/{}", role.name), 8)
        )
    }
}

/// `s` as a valid label value: unchanged when it already is one, otherwise the allowed characters
/// of a prefix and a hash of the whole string, so distinct inputs stay distinct.
pub fn label_value(s: &str) -> String {
    if is_label_value(s) {
        return s.to_owned();
    }
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(LABEL_VALUE_MAX - HASH_LEN - 1)
        .collect();
    let cleaned = cleaned.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let hash = short_hash(s, HASH_LEN);
    if cleaned.is_empty() {
        hash
    } else {
        format!("{cleaned}-{hash}")
    }
}

/// Whether `s` is a valid Kubernetes label value.
pub fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let bytes = s.as_bytes();
    s.len() <= LABEL_VALUE_MAX
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn short_hash(s: &str, len: usize) -> String {
    let mut hex = hex::encode(Sha256::digest(s.as_bytes()));
    hex.truncate(len);
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn names_are_deterministic_and_depend_on_the_uid() {
        let a = ChildNames::new("build-fix", "uid-1");
        assert_eq!(a, ChildNames::new("build-fix", "uid-1"));
        assert!(a.service_account.starts_with("eid-build-fix-"), "{a:?}");
        assert_eq!(a.secret, format!("{}-token", a.service_account));
        assert_eq!(a.role, a.service_account);
        let b = ChildNames::new("build-fix", "uid-2");
        assert_ne!(a.service_account, b.service_account);
    }

    #[test]
    fn long_and_dotted_names_give_valid_short_names() {
        let long = format!("{}.{}", "a".repeat(120), "b".repeat(120));
        for name in [long.as_str(), "x.y.z", "---", "UPPER", "a"] {
            let names = ChildNames::new(name, "0a1b");
            assert!(is_dns_label(&names.service_account), "{name}: {names:?}");
            assert!(is_dns_label(&names.secret), "{name}: {names:?}");
            let rb = names.role_binding(&RoleRef {
                kind: RoleKind::ClusterRole,
                name: "view".into(),
            });
            assert!(is_dns_label(&rb), "{rb}");
        }
        // Two long names sharing a prefix still differ through the UID hash.
        assert_ne!(
            ChildNames::new(&"a".repeat(100), "u1").service_account,
            ChildNames::new(&"a".repeat(101), "u2").service_account
        );
    }

    #[test]
    fn role_binding_names_distinguish_kind_and_name() {
        let names = ChildNames::new("t", "u");
        let view = RoleRef {
            kind: RoleKind::ClusterRole,
            name: "view".into(),
        };
        let view_role = RoleRef {
            kind: RoleKind::Role,
            name: "view".into(),
        };
        let edit = RoleRef {
            kind: RoleKind::ClusterRole,
            name: "edit".into(),
        };
        let all = [
            names.role_binding(&view),
            names.role_binding(&view_role),
            names.role_binding(&edit),
        ];
        assert_ne!(all[0], all[1]);
        assert_ne!(all[0], all[2]);
        assert_ne!(all[1], all[2]);
        assert!(all.iter().all(|n| *n != names.rules_binding));
    }

    #[test]
    fn label_values_are_valid_and_distinct() {
        assert_eq!(label_value("agent-7"), "agent-7");
        for s in [
            "spiffe://td/ns/a/sa/b",
            &"x".repeat(64),
            "-lead",
            "///",
            "ü",
        ] {
            let v = label_value(s);
            assert!(is_label_value(&v), "{s:?} -> {v:?}");
            assert!(!v.is_empty());
        }
        assert_ne!(label_value("a/b"), label_value("a:b"));
        assert!(!is_label_value("a b"));
        assert!(!is_label_value(&"y".repeat(64)));
    }
}
