use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn policy(deny: &[&str], allow: &[&str]) -> EgressPolicy {
    let strings = |values: &[&str]| values.iter().map(|v| v.to_string()).collect::<Vec<_>>();
    EgressPolicy::from_flags(&strings(deny), &strings(allow)).unwrap()
}

#[test]
fn rules_parse_cidrs_addresses_names_and_suffixes() {
    assert_eq!(
        "10.1.2.3/8".parse::<Rule>().unwrap(),
        Rule::Net("10.0.0.0/8".parse().unwrap())
    );
    assert_eq!(
        "192.0.2.7".parse::<Rule>().unwrap(),
        Rule::Net("192.0.2.7/32".parse().unwrap())
    );
    assert_eq!(
        "[2001:db8::1]".parse::<Rule>().unwrap(),
        Rule::Net("2001:db8::1/128".parse().unwrap())
    );
    assert_eq!(
        "::ffff:10.0.0.0/104".parse::<Rule>().unwrap(),
        Rule::Net("10.0.0.0/8".parse().unwrap())
    );
    assert_eq!(
        " Mirror.Example.COM. ".parse::<Rule>().unwrap(),
        Rule::Host("mirror.example.com".into())
    );
    assert_eq!(
        "*.svc.cluster.local".parse::<Rule>().unwrap(),
        Rule::Suffix("svc.cluster.local".into())
    );
    for bad in [
        "",
        "10.0.0.0/33",
        "not a host",
        "a..b",
        "*.",
        "exa*mple.com",
        "1.2.3/x",
    ] {
        assert!(bad.parse::<Rule>().is_err(), "{bad:?} must not parse");
    }
    let error = EgressPolicy::from_flags(&["10.0.0.0/99".into()], &[]).unwrap_err();
    assert!(error.starts_with("--source-deny 10.0.0.0/99: "), "{error}");
}

#[test]
fn by_default_only_link_local_is_refused() {
    let policy = EgressPolicy::default();
    for refused in ["169.254.169.254", "169.254.0.1", "fe80::1", "febf::1"] {
        let refusal = policy.check(None, ip(refused)).unwrap_err();
        assert!(
            matches!(refusal.denied_by, DeniedBy::Default(_)),
            "{refused}"
        );
    }
    for allowed in [
        "127.0.0.1",
        "10.0.0.1",
        "8.8.8.8",
        "::1",
        "fd00::1",
        "fec0::1",
    ] {
        assert_eq!(policy.check(None, ip(allowed)), Ok(()), "{allowed}");
    }
}

#[test]
fn ipv4_mapped_ipv6_addresses_are_judged_as_ipv4() {
    let policy = EgressPolicy::default();
    let refusal = policy
        .check(None, ip("::ffff:169.254.169.254"))
        .unwrap_err();
    assert_eq!(refusal.ip, Some(ip("169.254.169.254")));
    let policy = self::policy(&["10.0.0.0/8"], &["::ffff:10.1.0.0/112"]);
    assert!(policy.check(None, ip("::ffff:10.2.0.1")).is_err());
    assert_eq!(policy.check(None, ip("10.1.0.9")), Ok(()));
    // A mapped form does not belong to IPv6 ranges, so ::/0 leaves IPv4 alone.
    let policy = self::policy(&["::/0"], &[]);
    assert_eq!(policy.check(None, ip("::ffff:192.0.2.1")), Ok(()));
    assert!(policy.check(None, ip("2001:db8::1")).is_err());
}

#[test]
fn allow_only_opens_holes_in_deny_rules_and_defaults() {
    let policy = policy(
        &["0.0.0.0/0", "::/0"],
        &["mirror.example.com", "192.0.2.0/24"],
    );
    assert_eq!(
        policy.check(Some("mirror.example.com"), ip("203.0.113.5")),
        Ok(())
    );
    assert_eq!(
        policy.check(Some("MIRROR.example.com."), ip("2001:db8::5")),
        Ok(())
    );
    assert_eq!(
        policy.check(Some("other.example.com"), ip("192.0.2.9")),
        Ok(())
    );
    let refusal = policy
        .check(Some("other.example.com"), ip("203.0.113.5"))
        .unwrap_err();
    assert_eq!(
        refusal.denied_by,
        DeniedBy::Flag("0.0.0.0/0".parse().unwrap())
    );
    // An allow rule outside every deny rule changes nothing.
    let open = self::policy(&[], &["10.0.0.0/8"]);
    assert_eq!(open.check(None, ip("8.8.8.8")), Ok(()));
    // ... and one inside the defaults opens them.
    let metadata = self::policy(&[], &["169.254.169.254/32"]);
    assert_eq!(metadata.check(None, ip("169.254.169.254")), Ok(()));
    assert!(metadata.check(None, ip("169.254.169.253")).is_err());
}

#[test]
fn host_rules_match_names_and_suffixes_not_apexes() {
    let policy = policy(
        &["*.svc.cluster.local", "kubelet.internal"],
        &["ok.svc.cluster.local"],
    );
    assert!(policy.check_host("api.default.svc.cluster.local").is_err());
    assert!(policy.check_host("KUBELET.internal").is_err());
    assert_eq!(policy.check_host("svc.cluster.local"), Ok(()));
    assert_eq!(policy.check_host("xsvc.cluster.local"), Ok(()));
    assert_eq!(policy.check_host("ok.svc.cluster.local"), Ok(()));
    // A literal IP given as a host is judged as an address.
    assert!(policy.check_host("169.254.169.254").is_err());
    assert!(policy.check_host("[fe80::1]").is_err());
}

#[test]
fn a_refusal_names_host_address_class_and_the_flag_that_opens_it() {
    let refusal = EgressPolicy::default()
        .check(Some("metadata.internal"), ip("169.254.169.254"))
        .unwrap_err();
    let text = refusal.to_string();
    assert!(
        text.contains("metadata.internal (169.254.169.254, a link-local address"),
        "{text}"
    );
    assert!(
        text.contains("(169.254.0.0/16) are refused by default"),
        "{text}"
    );
    assert!(
        text.contains("--source-allow 169.254.169.254/32 (or --source-allow metadata.internal)"),
        "{text}"
    );
    let refusal = policy(&["10.0.0.0/8"], &[])
        .check(None, ip("10.9.8.7"))
        .unwrap_err();
    let text = refusal.to_string();
    assert!(text.contains("10.9.8.7 (a private address)"), "{text}");
    assert!(
        text.contains("it matches --source-deny 10.0.0.0/8"),
        "{text}"
    );
    assert!(text.contains("--source-allow 10.9.8.7/32"), "{text}");
}

#[test]
fn filter_keeps_allowed_addresses_and_refuses_when_none_is_left() {
    let policy = EgressPolicy::default();
    let a = |text: &str| SocketAddr::new(ip(text), 443);
    assert_eq!(
        policy.filter("h", vec![a("169.254.1.1"), a("192.0.2.1")]),
        Ok(vec![a("192.0.2.1")])
    );
    assert!(
        policy
            .filter("h", vec![a("169.254.1.1"), a("fe80::2")])
            .is_err()
    );
}
