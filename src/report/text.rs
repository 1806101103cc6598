//! Pure text shaping for forge limits: character limits, 4-byte characters, the per-image
//! markdown table, and path encoding.

use super::ImageRow;

/// The ellipsis put where text was cut (U+2026, 3 bytes in UTF-8, 1 UTF-16 unit).
const ELLIPSIS: char = '…';

/// Drops characters outside the Basic Multilingual Plane (4 bytes in UTF-8, emoji mostly):
/// GitHub stores status descriptions in a utf8mb3 column and answers 422 to them.
pub fn strip_astral(text: &str) -> String {
    text.chars().filter(|c| (*c as u32) <= 0xFFFF).collect()
}

/// `text` cut to at most `max` characters, on a character boundary, ending with "…" when it
/// was cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    // A cut right after whitespace would leave "word …"; trim it so the ellipsis hugs the text.
    cut.truncate(cut.trim_end().len());
    cut.push(ELLIPSIS);
    cut
}

/// One cell of a markdown table: pipes escaped and line breaks kept as `<br>`, so a message
/// can never break the table's layout.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' => out.push_str("\\|"),
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push_str("<br>");
                }
            }
            '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}

/// The per-image table (image | phase | progress | message), at most `max` characters: when
/// the images do not fit, whole rows are left out and a last line says how many.
pub fn image_table(rows: &[ImageRow], max: usize) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut table = String::from("| Image | Phase | Progress | Message |\n|---|---|---|---|\n");
    let mut length = table.chars().count();
    for (index, row) in rows.iter().enumerate() {
        let line = format!(
            "| {} | {} | {} | {} |\n",
            cell(&row.name),
            cell(&row.phase),
            cell(row.progress.as_deref().unwrap_or("")),
            cell(row.message.as_deref().unwrap_or("")),
        );
        let line_length = line.chars().count();
        let left = rows.len() - index;
        // Room for this row plus, if rows follow, the "N more" line.
        let footer = if left > 1 {
            format!("\n{ELLIPSIS} and {} more images\n", left - 1)
        } else {
            String::new()
        };
        if length + line_length + footer.chars().count() > max {
            let footer = format!("\n{ELLIPSIS} and {left} more images\n");
            if length + footer.chars().count() <= max {
                table.push_str(&footer);
            }
            return table;
        }
        table.push_str(&line);
        length += line_length;
    }
    table
}

/// Counts of images per phase, in order of first appearance: "3 Ready, 1 Importing".
pub fn phase_summary(rows: &[ImageRow]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for row in rows {
        match counts.iter_mut().find(|(phase, _)| *phase == row.phase) {
            Some((_, count)) => *count += 1,
            None => counts.push((&row.phase, 1)),
        }
    }
    counts
        .iter()
        .map(|(phase, count)| format!("{count} {phase}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Percent-encodes everything but RFC 3986 unreserved characters, so a value is one path
/// segment: GitLab's `group/sub/name` becomes `group%2Fsub%2Fname`.
pub fn path_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, phase: &str, message: Option<&str>) -> ImageRow {
        ImageRow {
            name: name.into(),
            phase: phase.into(),
            progress: Some("50%".into()),
            message: message.map(Into::into),
        }
    }

    #[test]
    fn four_byte_characters_are_dropped_and_others_kept() {
        assert_eq!(strip_astral("ok ✅ done 🚀 é…"), "ok ✅ done  é…");
        assert!(strip_astral("🚀🚀").is_empty());
    }

    #[test]
    fn truncation_counts_characters_and_ends_with_an_ellipsis() {
        assert_eq!(truncate_chars("short", 140), "short");
        let long = "é".repeat(300);
        let cut = truncate_chars(&long, 140);
        assert_eq!(cut.chars().count(), 140);
        assert!(cut.ends_with('…'));
        assert_eq!(truncate_chars("abc def", 5), "abc…");
        assert_eq!(truncate_chars("abc", 0), "");
        assert_eq!(truncate_chars("abcdef", 6), "abcdef");
    }

    #[test]
    fn table_has_a_row_per_image_and_escapes_cells() {
        let table = image_table(
            &[
                row("ubuntu", "Ready", None),
                row("alpine", "Failed", Some("404 | not\nfound")),
            ],
            65535,
        );
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert_eq!(lines[0], "| Image | Phase | Progress | Message |");
        assert_eq!(lines[2], "| ubuntu | Ready | 50% |  |");
        assert_eq!(lines[3], "| alpine | Failed | 50% | 404 \\| not<br>found |");
        assert_eq!(image_table(&[], 100), "");
    }

    #[test]
    fn a_long_table_keeps_whole_rows_and_says_how_many_are_missing() {
        let rows: Vec<_> = (0..1000)
            .map(|i| row(&format!("image-{i}"), "Importing", Some(&"x".repeat(100))))
            .collect();
        let table = image_table(&rows, 2000);
        assert!(table.chars().count() <= 2000);
        let shown = table.lines().filter(|l| l.starts_with("| image-")).count();
        assert!(shown > 0);
        assert!(
            table.ends_with(&format!("… and {} more images\n", 1000 - shown)),
            "{table}"
        );
    }

    #[test]
    fn phases_are_counted() {
        let rows = [
            row("a", "Ready", None),
            row("b", "Importing", None),
            row("c", "Ready", None),
        ];
        assert_eq!(phase_summary(&rows), "2 Ready, 1 Importing");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("group/sub/name"), "group%2Fsub%2Fname");
        assert_eq!(path_segment("42"), "42");
        assert_eq!(path_segment("a b"), "a%20b");
    }
}
