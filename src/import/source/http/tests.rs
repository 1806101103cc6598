use super::headers::*;
use super::target::*;
use super::*;
use crate::import::source::reason;

#[test]
fn last_modified_is_a_validator_only_a_minute_before_the_date() {
    let date = Some("Thu, 03 Dec 2026 13:00:00 GMT");
    assert_eq!(
        strong_last_modified(Some("Thu, 03 Dec 2026 12:59:00 GMT"), date).as_deref(),
        Some("Thu, 03 Dec 2026 12:59:00 GMT")
    );
    assert_eq!(
        strong_last_modified(Some("Thu, 03 Dec 2026 12:59:30 GMT"), date),
        None,
        "changed within the last minute: weak"
    );
    assert_eq!(
        strong_last_modified(Some("Thu, 03 Dec 2026 12:00:00 GMT"), None),
        None
    );
    assert_eq!(strong_last_modified(Some("yesterday"), date), None);
}

#[test]
fn redact_url_drops_credentials_and_query() {
    assert_eq!(
        redact_url("https://user:s3cret@example.com:8443/a/b.img?token=xyz#frag"),
        "https://example.com:8443/a/b.img?<redacted>"
    );
    assert_eq!(
        redact_url("http://example.com/a.img"),
        "http://example.com/a.img"
    );
    let unparsable = redact_url("http://user:s3cret@exa mple.com/a?token=xyz");
    assert!(!unparsable.contains("s3cret") && !unparsable.contains("xyz"));
    assert!(unparsable.contains("exa mple.com/a"));
}

#[test]
fn content_range_parses() {
    assert_eq!(
        parse_content_range("bytes 100-199/1000"),
        Some(ContentRange {
            start: Some(100),
            total: Some(1000)
        })
    );
    assert_eq!(
        parse_content_range("bytes 5-9/*"),
        Some(ContentRange {
            start: Some(5),
            total: None
        })
    );
    assert_eq!(
        parse_content_range("bytes */1000"),
        Some(ContentRange {
            start: None,
            total: Some(1000)
        })
    );
    assert_eq!(parse_content_range("bytes 9-5/10"), None);
    assert_eq!(parse_content_range("items 1-2/3"), None);
}

#[test]
fn file_names() {
    assert_eq!(
        content_disposition_file_name(r#"attachment; filename="a \"b\".img""#).as_deref(),
        Some(r#"a "b".img"#)
    );
    assert_eq!(
        content_disposition_file_name(
            "attachment; filename=\"x.img\"; filename*=UTF-8''%C3%A9t%C3%A9.qcow2"
        )
        .as_deref(),
        Some("été.qcow2")
    );
    assert_eq!(
        content_disposition_file_name("attachment; filename=\"../../etc/passwd\"").as_deref(),
        Some("passwd")
    );
    assert_eq!(content_disposition_file_name("inline"), None);
    let url = Url::parse("https://h/dir/my%20disk.qcow2/").unwrap();
    assert_eq!(url_file_name(&url).as_deref(), Some("my disk.qcow2"));
    assert_eq!(url_file_name(&Url::parse("https://h/").unwrap()), None);
}

#[test]
fn retry_after_parses_seconds_and_dates() {
    assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
        Some(Duration::ZERO)
    );
    assert_eq!(parse_retry_after("soon"), None);
}

#[test]
fn backoff_grows_and_is_capped() {
    let options = HttpSourceOptions::default();
    for attempt in 1..40 {
        let delay = backoff_delay(&options, attempt);
        let base = Duration::from_secs(1u64 << (attempt - 1).min(6)).min(options.max_backoff);
        assert!(delay >= base / 2 && delay <= base, "{attempt}: {delay:?}");
    }
}

#[test]
fn target_scrubs_secrets() {
    let target = Target::parse("https://alice:p%40ssword@h.example/f.img?sig=abcdef").unwrap();
    assert_eq!(target.password.as_deref(), Some("p@ssword"));
    let text = target.scrub("x p@ssword y p%40ssword z sig=abcdef");
    assert!(
        !text.contains("ssword") && !text.contains("abcdef"),
        "{text}"
    );
    assert_eq!(target.url.as_str(), "https://h.example/f.img?sig=abcdef");
}

#[test]
fn invalid_urls_are_permanent() {
    for url in ["not a url", "ftp://h/x", "http://", "file:///tmp/x"] {
        let error = Target::parse(url).err().unwrap();
        assert_eq!(error.reason, reason::INVALID_URL, "{url}");
        assert!(error.is_permanent());
    }
}

proptest::proptest! {
    #[test]
    fn content_ranges_never_panic_and_hold_only_ranges_inside_the_file(value in ".{0,64}") {
        if let Some(ContentRange { start: Some(start), total: Some(total) }) =
            parse_content_range(&value)
        {
            proptest::prop_assert!(start < total, "{value:?}");
        }
    }

    #[test]
    fn a_valid_content_range_reads_back(start in 0u64..1 << 40, len in 1u64..1 << 30, extra in 0u64..1 << 30) {
        let end = start + len - 1;
        let total = end + 1 + extra;
        let parsed = parse_content_range(&format!("bytes {start}-{end}/{total}"));
        proptest::prop_assert_eq!(parsed, Some(ContentRange { start: Some(start), total: Some(total) }));
        proptest::prop_assert_eq!(parse_content_range(&format!("bytes {start}-{end}/{end}")), None);
    }

    #[test]
    fn a_content_disposition_never_names_a_path(value in "(attachment; )?(filename\\*?=)?[ -~]{0,40}") {
        if let Some(name) = content_disposition_file_name(&value) {
            proptest::prop_assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'), "{name:?}");
            proptest::prop_assert!(name != "." && name != ".." && !name.is_empty(), "{name:?}");
        }
    }
}
