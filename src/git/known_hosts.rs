//! `known_hosts` matching for SSH remotes: the host key a server presents must be listed for
//! that host, or the fetch stops. Plain, wildcard, negated, `[host]:port` and hashed
//! (`|1|salt|hash`, as `ssh-keyscan -H` writes) host patterns; `@revoked` keys are refused.
//! `@cert-authority` lines are skipped: libgit2 does not hand over host certificates.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// The key is listed for the host.
    Trusted,
    /// The host is listed, with other keys: possibly an attack, possibly a rotated key.
    Mismatch,
    /// The key is marked `@revoked`.
    Revoked,
    /// The host is not in the file at all.
    UnknownHost,
}

struct Entry {
    revoked: bool,
    patterns: String,
    key: Vec<u8>,
}

/// Parses the file; lines that cannot be read are skipped, as OpenSSH does.
fn entries(known_hosts: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for line in known_hosts.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let mut revoked = false;
        if first.starts_with('@') {
            match first {
                "@revoked" => revoked = true,
                _ => continue,
            }
            first = fields.next().unwrap_or_default();
        }
        let (Some(_key_type), Some(key)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(key) = STANDARD.decode(key) else {
            continue;
        };
        entries.push(Entry {
            revoked,
            patterns: first.to_string(),
            key,
        });
    }
    entries
}

/// The name OpenSSH looks up: `host`, or `[host]:port` off port 22.
pub fn lookup_name(host: &str, port: Option<u16>) -> String {
    match port {
        Some(port) if port != 22 => format!("[{host}]:{port}"),
        _ => host.to_string(),
    }
}

/// Whether `key` (the SSH wire-format public key, as in the file's base64 field) is trusted
/// for `name` (see [`lookup_name`]).
pub fn check(known_hosts: &str, name: &str, key: &[u8]) -> HostKeyCheck {
    let entries = entries(known_hosts);
    let listed = |entry: &&Entry| patterns_match(&entry.patterns, name);
    if entries
        .iter()
        .filter(listed)
        .any(|entry| entry.revoked && entry.key == key)
    {
        return HostKeyCheck::Revoked;
    }
    let mut host_listed = false;
    for entry in entries.iter().filter(listed).filter(|entry| !entry.revoked) {
        if entry.key == key {
            return HostKeyCheck::Trusted;
        }
        host_listed = true;
    }
    if host_listed {
        HostKeyCheck::Mismatch
    } else {
        HostKeyCheck::UnknownHost
    }
}

/// A comma-separated pattern list matches when some pattern matches and no negated one does.
fn patterns_match(patterns: &str, name: &str) -> bool {
    if let Some(hashed) = patterns.strip_prefix("|1|") {
        return hashed_match(hashed, name);
    }
    let mut matched = false;
    for pattern in patterns.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if wildcard_match(&negated.to_ascii_lowercase(), &name.to_ascii_lowercase()) {
                return false;
            }
        } else if wildcard_match(&pattern.to_ascii_lowercase(), &name.to_ascii_lowercase()) {
            matched = true;
        }
    }
    matched
}

/// `|1|base64(salt)|base64(HMAC-SHA1(salt, name))`.
fn hashed_match(hashed: &str, name: &str) -> bool {
    let Some((salt, digest)) = hashed.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(digest)) = (STANDARD.decode(salt), STANDARD.decode(digest)) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    hmac::verify(&key, name.as_bytes(), &digest).is_ok()
}

/// `*` matches any run of characters, `?` exactly one.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if let Some((star, matched)) = backtrack {
            p = star + 1;
            t = matched + 1;
            backtrack = Some((star, matched + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    const KEY_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIBBBBnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";

    fn key(text: &str) -> Vec<u8> {
        STANDARD.decode(text).unwrap()
    }

    #[test]
    fn a_listed_key_is_trusted_and_another_key_for_the_host_is_a_mismatch() {
        let file = format!("# comment\ngit.example.com,10.0.0.1 ssh-ed25519 {KEY_A} c\n");
        assert_eq!(
            check(&file, "git.example.com", &key(KEY_A)),
            HostKeyCheck::Trusted
        );
        assert_eq!(check(&file, "10.0.0.1", &key(KEY_A)), HostKeyCheck::Trusted);
        assert_eq!(
            check(&file, "git.example.com", &key(KEY_B)),
            HostKeyCheck::Mismatch
        );
        assert_eq!(
            check(&file, "other.example.com", &key(KEY_A)),
            HostKeyCheck::UnknownHost
        );
    }

    #[test]
    fn ports_other_than_22_are_looked_up_in_brackets() {
        let file = format!("[127.0.0.1]:2222 ssh-ed25519 {KEY_A}\n");
        assert_eq!(lookup_name("127.0.0.1", Some(22)), "127.0.0.1");
        let name = lookup_name("127.0.0.1", Some(2222));
        assert_eq!(check(&file, &name, &key(KEY_A)), HostKeyCheck::Trusted);
        assert_eq!(
            check(&file, "127.0.0.1", &key(KEY_A)),
            HostKeyCheck::UnknownHost
        );
    }

    #[test]
    fn wildcards_and_negations() {
        let file = format!("*.example.com,!bad.example.com ssh-ed25519 {KEY_A}\n");
        assert_eq!(
            check(&file, "git.example.com", &key(KEY_A)),
            HostKeyCheck::Trusted
        );
        assert_eq!(
            check(&file, "bad.example.com", &key(KEY_A)),
            HostKeyCheck::UnknownHost
        );
        assert!(wildcard_match("git?.ex*", "git1.example.com"));
        assert!(!wildcard_match("git?.ex*", "git12.example.com"));
    }

    #[test]
    fn hashed_hosts_as_ssh_keyscan_h_writes_them() {
        // HMAC-SHA1 of "git.example.com" under the salt, computed here the same way.
        let salt = b"0123456789abcdef0123";
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt),
            b"git.example.com",
        );
        let file = format!(
            "|1|{}|{} ssh-ed25519 {KEY_A}\n",
            STANDARD.encode(salt),
            STANDARD.encode(tag.as_ref())
        );
        assert_eq!(
            check(&file, "git.example.com", &key(KEY_A)),
            HostKeyCheck::Trusted
        );
        assert_eq!(
            check(&file, "git.example.org", &key(KEY_A)),
            HostKeyCheck::UnknownHost
        );
    }

    #[test]
    fn revoked_keys_are_refused_even_when_also_listed() {
        let file = format!(
            "git.example.com ssh-ed25519 {KEY_A}\n@revoked * ssh-ed25519 {KEY_A}\n@cert-authority * ssh-ed25519 {KEY_B}\n"
        );
        assert_eq!(
            check(&file, "git.example.com", &key(KEY_A)),
            HostKeyCheck::Revoked
        );
    }

    proptest::proptest! {
        #[test]
        fn any_known_hosts_text_is_read_without_panic(text in "[ -~\n]{0,300}", name in "[a-z0-9.:\\[\\]-]{0,30}") {
            let _ = check(&text, &name, b"key");
        }

        #[test]
        fn a_pattern_without_wildcards_matches_only_itself(text in "[a-z0-9.-]{0,20}", other in "[a-z0-9.-]{0,20}") {
            proptest::prop_assert!(wildcard_match(&text, &text));
            proptest::prop_assert_eq!(wildcard_match(&text, &other), text == other);
            proptest::prop_assert!(wildcard_match("*", &other));
        }
    }
}
