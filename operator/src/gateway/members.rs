//! Member names that collide: one pass over a JSON body, before it is decided, that refuses any
//! object in which two member names are equal after Unicode case folding (exact duplicates
//! included), at any depth.
//!
//! Parsers disagree about such objects: JavaScript and Python keep the last of two equal names,
//! serde_json (with `preserve_order`) too, and Go's `encoding/json` matches struct fields
//! case-insensitively with Unicode folding (`ſ` is `s`, `K` (U+212A) is `k`) and keeps the last
//! match. A message such as `{"method":"ping","Method":"tools/call"}` or
//! `"params":{"name":"echo","Name":"delete_all"}` could then be decided as one thing and run as
//! another. Refusing every object whose names collide under full case folding (a superset of the
//! simple folding Go uses) leaves one reading of the message, whichever parser the server uses.
//!
//! The pass is a serde visitor over the bytes (no `Value` is built): names without escapes are
//! borrowed from the body, strings and numbers are skipped, and serde_json's recursion limit
//! bounds the depth. Names are compared linearly while an object has few; past
//! [`LINEAR_NAMES`] they go into a hash set of their folded forms.

use std::{borrow::Cow, collections::HashSet, fmt};

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use unicase::UniCase;

/// Objects with at most this many members are checked by comparing names pairwise.
const LINEAR_NAMES: usize = 16;

/// Why a body fails the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberError {
    /// The body is not one JSON value (serde_json's message).
    Syntax(String),
    /// One object has two member names equal after case folding: the first, then the second.
    Collision(String, String),
}

impl fmt::Display for MemberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax(e) => write!(f, "parse error: {e}"),
            Self::Collision(first, second) if first == second => write!(
                f,
                "an object has the member {first:?} twice; parsers disagree about which one counts, so the message is refused"
            ),
            Self::Collision(first, second) => write!(
                f,
                "an object has the members {first:?} and {second:?}, equal but for case; parsers disagree about which one counts, so the message is refused"
            ),
        }
    }
}

/// Check that `body` is one JSON value none of whose objects has two member names equal after
/// Unicode case folding.
pub fn check_member_names(body: &[u8]) -> Result<(), MemberError> {
    let mut collision = None;
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Node {
        collision: &mut collision,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    match (collision, parsed) {
        (Some((first, second)), _) => Err(MemberError::Collision(first, second)),
        (None, Err(e)) => Err(MemberError::Syntax(e.to_string())),
        (None, Ok(())) => Ok(()),
    }
}

/// The names seen in one object.
enum Names<'de> {
    Few(Vec<UniCase<Cow<'de, str>>>),
    Many(HashSet<UniCase<Cow<'de, str>>>),
}

impl<'de> Names<'de> {
    /// Add `name`; the name already there when it collides with one.
    fn insert(&mut self, name: Cow<'de, str>) -> Result<(), String> {
        let name = UniCase::new(name);
        match self {
            Self::Few(names) => {
                if let Some(first) = names.iter().find(|n| **n == name) {
                    return Err(first.as_ref().to_owned());
                }
                if names.len() < LINEAR_NAMES {
                    names.push(name);
                } else {
                    let mut set: HashSet<_> = names.drain(..).collect();
                    set.insert(name);
                    *self = Self::Many(set);
                }
                Ok(())
            }
            Self::Many(names) => match names.get(&name) {
                Some(first) => Err(first.as_ref().to_owned()),
                None => {
                    names.insert(name);
                    Ok(())
                }
            },
        }
    }
}

/// Any JSON value: its objects are checked, everything else is skipped.
struct Node<'c> {
    collision: &'c mut Option<(String, String)>,
}

impl<'de> DeserializeSeed<'de> for Node<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Node<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        Ok(())
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Node {
                collision: &mut *self.collision,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut names = Names::Few(Vec::new());
        while let Some(name) = map.next_key_seed(Name)? {
            let second = name.as_ref().to_owned();
            if let Err(first) = names.insert(name) {
                *self.collision = Some((first, second));
                return Err(de::Error::custom("member names collide"));
            }
            map.next_value_seed(Node {
                collision: &mut *self.collision,
            })?;
        }
        Ok(())
    }
}

/// A member name, borrowed from the body when it has no escapes.
struct Name;

impl<'de> DeserializeSeed<'de> for Name {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Name {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collides(body: &str) -> bool {
        matches!(
            check_member_names(body.as_bytes()),
            Err(MemberError::Collision(..))
        )
    }

    #[test]
    fn distinct_names_pass() {
        for body in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":1,"b":[{"a":2,"A2":null}],"c":"Name"}}}"#,
            r#"[{"a":1},{"a":2},{"A":3}]"#,
            r#"{"a":{"a":{"a":{}}}}"#,
            r#"{"n":-1.5e3,"m":18446744073709551615,"o":-9223372036854775808,"t":true,"f":false,"z":null}"#,
            r#""just a string""#,
            "42",
            // Not the same name under folding: dotless ı and dotted İ fold to themselves.
            r#"{"i":1,"ı":2,"İ":3}"#,
        ] {
            assert_eq!(check_member_names(body.as_bytes()), Ok(()), "{body}");
        }
        // Many members: the hash-set path.
        let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        let body = format!("{{{}}}", many.join(","));
        assert_eq!(check_member_names(body.as_bytes()), Ok(()));
    }

    #[test]
    fn names_equal_after_case_folding_collide_at_any_depth() {
        for body in [
            // Exact duplicates (JS/Python keep the last).
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#,
            // Case variants (Go matches struct fields case-insensitively, keeping the last).
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call","params":{"name":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","Name":"delete_all","arguments":{}}}"#,
            // Unicode folding: long s (U+017F) is s, the Kelvin sign (U+212A) is k.
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","name":"x","ſ":1,"s":2}}"#,
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"kind\":\"a\",\"\u{212A}ind\":\"b\"}}}",
            // Full folding: ß is ss.
            r#"{"Maße":1,"MASSE":2}"#,
            // Escapes are decoded before comparing.
            r#"{"name":"echo","\u004eame":"delete_all"}"#,
            r#"{"params":{"name":"echo","n\u0061me":"x"}}"#,
            // Deep inside arrays.
            r#"{"a":[1,{"b":[{"x":1,"X":2}]}]}"#,
        ] {
            assert!(collides(body), "{body}");
        }
        // Many members, the duplicate last: the hash-set path.
        let mut many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        many.push("\"K42\":0".into());
        let body = format!("{{{}}}", many.join(","));
        assert_eq!(
            check_member_names(body.as_bytes()),
            Err(MemberError::Collision("k42".into(), "K42".into()))
        );
        let err = check_member_names(br#"{"name":"a","Name":"b"}"#).expect_err("collides");
        assert_eq!(err, MemberError::Collision("name".into(), "Name".into()));
        assert!(err.to_string().contains("\"name\" and \"Name\""), "{err}");
    }

    #[test]
    fn syntax_errors_are_told_apart() {
        for body in [
            "{nope",
            "{\"a\":1} trailing",
            "",
            "[1,",
            "{\"a\":\"\\ud800\"}",
        ] {
            assert!(
                matches!(
                    check_member_names(body.as_bytes()),
                    Err(MemberError::Syntax(_))
                ),
                "{body}"
            );
        }
        // serde_json's recursion limit holds: no stack overflow on deep nesting.
        let deep = "[".repeat(100_000);
        assert!(matches!(
            check_member_names(deep.as_bytes()),
            Err(MemberError::Syntax(_))
        ));
    }
}
