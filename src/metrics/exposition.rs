//! The two text formats a scraper may ask for. prometheus-client writes OpenMetrics only;
//! Prometheus asks for it, while `curl` and `promtool check metrics` read the classic text
//! format, where a counter's family is named with its `_total` suffix and `# UNIT` and
//! `# EOF` do not exist.

/// The exposition formats of `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    OpenMetrics,
    PrometheusText,
}

impl Exposition {
    /// The format an `Accept` header asks for: OpenMetrics when it is named, as Prometheus
    /// does, else the classic text format (client_golang decides the same way).
    pub fn negotiate(accept: Option<&str>) -> Self {
        let names_open_metrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if names_open_metrics {
            Self::OpenMetrics
        } else {
            Self::PrometheusText
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Rewrites prometheus-client's OpenMetrics text into the classic text format.
pub(super) fn to_prometheus_text(open_metrics: &str) -> String {
    let mut out = String::with_capacity(open_metrics.len());
    // prometheus-client writes HELP before TYPE; a counter's HELP is held until its TYPE
    // says the family needs the suffix.
    let mut help: Option<(&str, &str)> = None;
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            flush_help(&mut out, help.take(), "");
            help = rest.split_once(' ').or(Some((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            match help.take() {
                Some(held) if held.0 == family => flush_help(&mut out, Some(held), suffix),
                other => flush_help(&mut out, other, ""),
            }
            out.push_str(&format!("# TYPE {family}{suffix} {kind}\n"));
            continue;
        }
        flush_help(&mut out, help.take(), "");
        out.push_str(line);
        out.push('\n');
    }
    flush_help(&mut out, help, "");
    out
}

fn flush_help(out: &mut String, help: Option<(&str, &str)>, suffix: &str) {
    if let Some((family, text)) = help {
        out.push_str(&format!("# HELP {family}{suffix} {text}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_open_metrics_and_curl_gets_the_classic_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert_eq!(
            Exposition::negotiate(Some(prometheus)),
            Exposition::OpenMetrics
        );
        assert_eq!(
            Exposition::negotiate(Some("*/*")),
            Exposition::PrometheusText
        );
        assert_eq!(Exposition::negotiate(None), Exposition::PrometheusText);
        assert_eq!(
            Exposition::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
            Exposition::PrometheusText
        );
        assert_eq!(
            Exposition::negotiate(Some("application/openmetrics-text;q=0.000, text/plain")),
            Exposition::PrometheusText
        );
    }

    #[test]
    fn counters_are_named_with_their_suffix_and_openmetrics_lines_are_dropped() {
        let open_metrics = "\
# HELP app_bytes Bytes received.
# TYPE app_bytes counter
# UNIT app_bytes bytes
app_bytes_total 5
# HELP app_in_flight Imports now.
# TYPE app_in_flight gauge
app_in_flight 1
# HELP app_seconds Durations.
# TYPE app_seconds histogram
app_seconds_sum 1.0
app_seconds_count 1
app_seconds_bucket{le=\"+Inf\"} 1
# EOF
";
        assert_eq!(
            to_prometheus_text(open_metrics),
            "\
# HELP app_bytes_total Bytes received.
# TYPE app_bytes_total counter
app_bytes_total 5
# HELP app_in_flight Imports now.
# TYPE app_in_flight gauge
app_in_flight 1
# HELP app_seconds Durations.
# TYPE app_seconds histogram
app_seconds_sum 1.0
app_seconds_count 1
app_seconds_bucket{le=\"+Inf\"} 1
"
        );
    }
}
