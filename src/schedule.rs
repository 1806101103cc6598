//! Re-verification schedules: standard five-field cron expressions (`minute hour
//! day-of-month month day-of-week`), as operators write them in crontabs.
//!
//! The `cron` crate wants a seconds field first and numbers the days of the week 1–7 from
//! Sunday, where crontab numbers them 0–7 with both 0 and 7 meaning Sunday. `parse` accepts
//! the crontab form and translates it, so `0 3 * * 1-5` means weekdays, as a person expects.

use std::str::FromStr;

/// A parsed schedule.
pub type Schedule = cron::Schedule;

/// Parses a five-field crontab expression, with an error that says what is wrong.
pub fn parse(expression: &str) -> Result<Schedule, String> {
    let fields: Vec<&str> = expression.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(format!(
            "{expression:?} has {} fields; a schedule has five: minute hour day-of-month month day-of-week, for example \"17 3 * * *\"",
            fields.len()
        ));
    }
    for ((field, value), (low, high)) in ["minute", "hour", "day-of-month", "month"]
        .into_iter()
        .zip(&fields)
        .zip([(0, 59), (0, 23), (1, 31), (1, 12)])
    {
        if let Some(number) = out_of_range(value, low, high) {
            return Err(format!(
                "{expression:?}: the {field} {number} is out of range; it is {low} to {high} (the form is minute hour day-of-month month day-of-week)"
            ));
        }
    }
    let day_of_week = translate_day_of_week(fields[4])?;
    let translated = format!(
        "0 {} {} {} {} {day_of_week}",
        fields[0], fields[1], fields[2], fields[3]
    );
    Schedule::from_str(&translated).map_err(|error| {
        // The cron crate's message draws a caret under its own six-field form: keep the words.
        let error = error.to_string();
        let words = error.lines().last().unwrap_or_default().trim();
        format!("{expression:?} is not a valid cron schedule ({words}); the form is minute hour day-of-month month day-of-week, for example \"17 3 * * *\"")
    })
}

/// The first number of a field (`5`, `1-5`, `*/15`, `1,30`) outside `low..=high`; steps
/// are not values and are left to the parser.
fn out_of_range(field: &str, low: u32, high: u32) -> Option<u32> {
    field
        .split(',')
        .flat_map(|part| {
            let values = part.split('/').next().unwrap_or_default();
            values.split('-').map(str::to_string).collect::<Vec<_>>()
        })
        .filter_map(|value| value.parse::<u32>().ok())
        .find(|number| !(low..=high).contains(number))
}

fn translate_day_of_week(field: &str) -> Result<String, String> {
    let mut items = Vec::new();
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        let suffix = step.map(|step| format!("/{step}")).unwrap_or_default();
        match range.split_once('-') {
            _ if range == "*" || range == "?" => items.push(format!("{range}{suffix}")),
            Some((from, to)) => {
                let (from, to) = (day_number(from)?, day_number(to)?);
                match (from, to) {
                    (Some(from), Some(to)) if from <= to => {
                        items.push(format!("{from}-{to}{suffix}"))
                    }
                    // 5-7 (Friday to Sunday) becomes 6-7 and 1 in the crate's numbering.
                    (Some(from), Some(to)) if step.is_none() => {
                        items.push(format!("{from}-7"));
                        items.push(format!("1-{to}"));
                    }
                    _ => items.push(item.to_string()),
                }
            }
            None => match day_number(range)? {
                Some(day) => items.push(format!("{day}{suffix}")),
                None => items.push(item.to_string()),
            },
        }
    }
    Ok(items.join(","))
}

/// A crontab day number (0–7, Sunday = 0 or 7) in the crate's numbering (1–7, Sunday = 1);
/// None for a day name, which both understand.
fn day_number(text: &str) -> Result<Option<u8>, String> {
    if !text.chars().all(|c| c.is_ascii_digit()) || text.is_empty() {
        return Ok(None);
    }
    match text.parse::<u8>() {
        Ok(day @ 0..=6) => Ok(Some(day + 1)),
        Ok(7) => Ok(Some(1)),
        _ => Err(format!(
            "day of week {text} is out of range: use 0-7 (0 and 7 are Sunday) or MON-SUN"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, TimeZone, Timelike, Utc};

    fn next_runs(expression: &str, count: usize) -> Vec<chrono::DateTime<Utc>> {
        let start = Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap(); // a Monday
        parse(expression)
            .unwrap()
            .after(&start)
            .take(count)
            .collect()
    }

    #[test]
    fn a_daily_schedule_runs_at_the_minute_and_hour_given() {
        let runs = next_runs("17 3 * * *", 2);
        assert_eq!((runs[0].hour(), runs[0].minute()), (3, 17));
        assert_eq!(runs[1] - runs[0], chrono::Duration::days(1));
    }

    #[test]
    fn days_of_week_count_from_sunday_as_in_crontab() {
        let weekdays: Vec<_> = next_runs("0 3 * * 1-5", 7)
            .iter()
            .map(|run| run.weekday().to_string())
            .collect();
        assert_eq!(weekdays, ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon", "Tue"]);
        let sundays = next_runs("0 3 * * 0", 1);
        assert_eq!(sundays[0].weekday(), chrono::Weekday::Sun);
        assert_eq!(next_runs("0 3 * * 7", 1), sundays);
        let weekend: Vec<_> = next_runs("0 3 * * 5-7", 3)
            .iter()
            .map(|run| run.weekday().to_string())
            .collect();
        assert_eq!(weekend, ["Fri", "Sat", "Sun"]);
    }

    #[test]
    fn wrong_expressions_say_what_the_form_is() {
        for wrong in [
            "* * * *",
            "0 0 * * * *",
            "61 * * * *",
            "0 3 * * 8",
            "every day",
        ] {
            let error = parse(wrong).unwrap_err();
            assert!(
                error.contains("minute hour day-of-month") || error.contains("0-7"),
                "{wrong}: {error}"
            );
        }
    }

    #[test]
    fn a_number_out_of_its_fields_range_is_named_with_the_range() {
        let error = parse("61 * * * *").unwrap_err();
        assert!(
            error.starts_with("\"61 * * * *\": the minute 61 is out of range; it is 0 to 59"),
            "{error}"
        );
        assert!(parse("0 24 * * *").unwrap_err().contains("the hour 24"));
        assert!(parse("0 3 0 * *").unwrap_err().contains("day-of-month 0"));
        assert!(
            parse("0 3 1-32 * *")
                .unwrap_err()
                .contains("day-of-month 32")
        );
        assert!(parse("*/15 3 * 13 *").unwrap_err().contains("month 13"));
        assert!(parse("*/15 0-23 1,31 1-12 *").is_ok());
        let error = parse("x 3 * * *").unwrap_err();
        assert!(!error.contains('^') && !error.contains('\n'), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn any_schedule_text_is_read_without_panic(text in "[0-9*/,\\- A-Za-z?LW#]{0,40}") {
            let _ = parse(&text);
        }
    }
}
