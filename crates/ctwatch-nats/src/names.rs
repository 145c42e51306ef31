//! Node names and container IDs as subject tokens and key-value keys.
//!
//! A token keeps `A-Z a-z 0-9 _ -` and writes every other byte as `=XX`
//! (two upper-case hex digits), so a hostile name (`a.b`, `*`, `>`, spaces,
//! non-UTF-8 escapes) can neither add subject tokens nor match wildcards, and
//! stays a valid JetStream key-value key. The empty name is `=`.

use crate::error::NatsError;
use crate::SUBJECT_PREFIX;

/// Names longer than this (in bytes) are refused.
pub const MAX_NAME_BYTES: usize = 255;

/// `name` as one subject token / key token.
pub fn token(name: &str) -> Result<String, NatsError> {
    if name.len() > MAX_NAME_BYTES {
        return Err(NatsError::InvalidName(name.chars().take(40).collect(), "longer than 255 bytes"));
    }
    if name.is_empty() {
        return Ok("=".to_string());
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    Ok(out)
}

/// The name a [`token`] stands for (`None` if it is not one).
pub fn untoken(token: &str) -> Option<String> {
    if token == "=" {
        return Some(String::new());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'=' => {
                let hex = token.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// An event kind as a subject token: `container_create` and the like, anything else escaped.
pub fn kind_token(kind: &str) -> String {
    token(kind).unwrap_or_else(|_| "unknown".to_string())
}

/// `ctwatch.events.<node>.<kind>` for an already-escaped node token.
pub fn event_subject(node_token: &str, kind: &str) -> String {
    format!("{SUBJECT_PREFIX}.{node_token}.{}", kind_token(kind))
}

/// The key of a container: `<node>.<container id>`.
pub fn container_key(node_token: &str, container_id: &str) -> Result<String, NatsError> {
    Ok(format!("{node_token}.{}", token(container_id)?))
}

/// The key of a node's heartbeat: `nodes.<node>` (a node named `nodes` has
/// the token `=6Eodes`, see [`node_token`], so its containers cannot clash).
pub fn node_key(node_token: &str) -> String {
    format!("nodes.{node_token}")
}

/// A node name as its token, with the reserved name `nodes` escaped.
pub fn node_token(node: &str) -> Result<String, NatsError> {
    if node == "nodes" {
        return Ok("=6Eodes".to_string());
    }
    token(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_one_token() {
        for name in ["a.b", "*", ">", "a b", "x\ty", "ctwatch.events.>", "é", "=41", "", "nodes", "a/b"] {
            let t = node_token(name).unwrap();
            assert!(!t.is_empty());
            assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)), "{name:?} -> {t:?}");
            assert_eq!(untoken(&t).as_deref(), Some(name), "{name:?} round trip via {t:?}");
        }
        assert_eq!(token("web-1_a").unwrap(), "web-1_a");
        assert_eq!(token("a.b").unwrap(), "a=2Eb");
        assert!(token(&"x".repeat(300)).is_err());
        assert_eq!(untoken("a.b"), None);
        assert_eq!(untoken("=4"), None);
        assert_eq!(event_subject("n1", "container_create"), "ctwatch.events.n1.container_create");
        assert_eq!(event_subject("n1", "bad.kind>"), "ctwatch.events.n1.bad=2Ekind=3E");
        assert_eq!(container_key("n1", "abc").unwrap(), "n1.abc");
    }
}
