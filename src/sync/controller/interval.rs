//! How often a catalog is fetched: its `interval`, read as Kubernetes writes durations and
//! held within what a timer holds.

use super::*;

/// Polls at most this often, and at least this often (a longer interval is read as this:
/// the CRD's pattern admits `99999999999999999999h`, which no timer can hold).
const MIN_INTERVAL: Duration = Duration::from_secs(10);

const MAX_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) fn interval_of(catalog: &ImageCatalog) -> Duration {
    poll_interval(&catalog.spec.interval)
}

fn poll_interval(text: &str) -> Duration {
    parse_duration(text)
        .unwrap_or(Duration::from_secs(300))
        .clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// `1h30m`, `90s`, `500ms`: the Kubernetes duration strings the CRD's pattern admits.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let value: f64 = number.parse().ok()?;
        number.clear();
        let unit = match c {
            'h' => 3600.0,
            's' => 1.0,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0.001
            }
            'm' => 60.0,
            _ => return None,
        };
        // Saturates instead of panicking on values no Duration holds.
        let part = Duration::try_from_secs_f64(value * unit).unwrap_or(Duration::MAX);
        total = total.saturating_add(part);
        any = true;
    }
    (any && number.is_empty()).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_kubernetes_writes_them() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5d"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Some(Duration::MAX),
            "saturates rather than panicking"
        );
        assert_eq!(parse_duration("1e400s"), None, "not the CRD's pattern");
    }

    #[test]
    fn poll_intervals_stay_within_what_a_timer_holds() {
        assert_eq!(poll_interval("99999999999999999999h"), MAX_INTERVAL);
        assert_eq!(poll_interval("1ms"), MIN_INTERVAL);
        assert_eq!(poll_interval("90s"), Duration::from_secs(90));
    }
}
