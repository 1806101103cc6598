//! Bounds on what reading a catalog may cost, checked by one streaming pass over each file's
//! YAML events before anything is indexed or deserialized. A hostile commit (a deep nest, an
//! alias bomb, a huge file) gets one clear problem; the daemon's memory never sees it.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};

use super::positions::Position;

/// The largest catalog file read (the Git reader checks it from the object header, before
/// the blob is loaded). A thousand entries take about 300 KiB.
pub const MAX_FILE_BYTES: usize = 4 << 20;
/// Documents (`---`) in one file.
pub const MAX_DOCUMENTS: usize = 10_000;
/// Nesting of mappings and sequences; a catalog entry needs about 6.
pub const MAX_DEPTH: usize = 64;
/// Nodes in the whole catalog, counting what aliases expand to (serde expands every alias
/// into a copy, so this is what the parsed catalog holds).
pub const MAX_NODES: usize = 1_000_000;

/// Why a file was not read, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    pub position: Position,
    pub message: String,
}

/// Checks one file against the limits, charging its nodes to `budget` (what is left of
/// [`MAX_NODES`] for the catalog). A YAML syntax error ends the check without a finding:
/// the parser that follows reports it with its position.
pub fn check(text: &str, budget: &mut usize) -> Result<(), Exceeded> {
    if text.len() > MAX_FILE_BYTES {
        return Err(Exceeded {
            position: Position { line: 1, column: 1 },
            message: format!(
                "the file has {} bytes, more than the {} MiB a catalog file may have; split it into several files",
                text.len(),
                MAX_FILE_BYTES >> 20
            ),
        });
    }
    let mut parser = Parser::new_from_str(text);
    // Expanded sizes of the open collections, and of every anchored node seen so far.
    let mut open: Vec<(usize, usize)> = Vec::new();
    let mut anchored: HashMap<usize, usize> = HashMap::new();
    let mut documents = 0usize;
    loop {
        let Ok((event, mark)) = parser.next_token() else {
            return Ok(());
        };
        let at = Position {
            line: mark.line(),
            column: mark.col() + 1,
        };
        let size = match event {
            Event::StreamEnd => return Ok(()),
            Event::DocumentStart => {
                documents += 1;
                if documents > MAX_DOCUMENTS {
                    return Err(Exceeded {
                        position: at,
                        message: format!(
                            "the file has more than {MAX_DOCUMENTS} YAML documents; split it into several files"
                        ),
                    });
                }
                continue;
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                open.push((anchor, 1));
                if open.len() > MAX_DEPTH {
                    return Err(Exceeded {
                        position: at,
                        message: format!(
                            "mappings and sequences nest deeper than {MAX_DEPTH} levels here; a catalog needs far fewer"
                        ),
                    });
                }
                charge(budget, 1, at)?;
                continue;
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let Some((anchor, size)) = open.pop() else {
                    continue;
                };
                if anchor > 0 {
                    anchored.insert(anchor, size);
                }
                // The collection itself was charged at its start, its children as they came.
                if let Some(parent) = open.last_mut() {
                    parent.1 = parent.1.saturating_add(size);
                }
                continue;
            }
            Event::Scalar(_, _, anchor, _) => {
                if anchor > 0 {
                    anchored.insert(anchor, 1);
                }
                1
            }
            Event::Alias(anchor) => anchored.get(&anchor).copied().unwrap_or(1),
            _ => continue,
        };
        charge(budget, size, at)?;
        if let Some(parent) = open.last_mut() {
            parent.1 = parent.1.saturating_add(size);
        }
    }
}

fn charge(budget: &mut usize, size: usize, at: Position) -> Result<(), Exceeded> {
    match budget.checked_sub(size) {
        Some(left) => {
            *budget = left;
            Ok(())
        }
        None => Err(Exceeded {
            position: at,
            message: format!(
                "the catalog holds more than {MAX_NODES} YAML nodes (aliases count as copies of what they name); split it across catalogs or drop repeated aliases"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(text: &str) -> Result<usize, Exceeded> {
        let mut budget = MAX_NODES;
        check(text, &mut budget).map(|()| MAX_NODES - budget)
    }

    #[test]
    fn an_ordinary_catalog_passes_and_counts_its_nodes() {
        // images, the sequence, the entry, two keys and their values, the root mapping.
        assert_eq!(checked("images:\n  - name: a\n    kind: b\n"), Ok(8));
    }

    #[test]
    fn aliases_count_as_the_copies_they_become() {
        let text = "a: &x [1, 2, 3]\nb: *x\nc: *x\n";
        // root, 3 keys, the anchored sequence of 4 nodes, two aliases of 4 each.
        assert_eq!(checked(text), Ok(1 + 3 + 4 + 4 + 4));
    }

    #[test]
    fn an_alias_bomb_is_refused_where_it_explodes() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            let previous = level - 1;
            let refs = vec![format!("*a{previous}"); 10].join(", ");
            text.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
        }
        let exceeded = checked(&text).expect_err("10^9 nodes");
        assert!(
            exceeded.message.contains("more than 1000000 YAML nodes"),
            "{exceeded:?}"
        );
        assert!(exceeded.position.line > 1, "{exceeded:?}");
    }

    #[test]
    fn deep_nesting_is_refused_at_the_level_that_passes_the_limit() {
        let text = "- ".repeat(12_000) + "x\n";
        let exceeded = checked(&text).expect_err("too deep");
        assert_eq!(
            exceeded.position,
            Position {
                line: 1,
                column: 2 * MAX_DEPTH + 1
            }
        );
        assert!(exceeded.message.contains("deeper than 64"), "{exceeded:?}");
    }

    #[test]
    fn too_many_documents_and_too_many_bytes_are_refused() {
        let exceeded = checked(&"--- a\n".repeat(MAX_DOCUMENTS + 1)).expect_err("documents");
        assert_eq!(exceeded.position.line, MAX_DOCUMENTS + 1);
        let exceeded = checked(&"#".repeat(MAX_FILE_BYTES + 1)).expect_err("bytes");
        assert!(exceeded.message.contains("4 MiB"), "{exceeded:?}");
    }

    #[test]
    fn the_budget_is_shared_by_the_files_of_a_catalog() {
        let mut budget = 10;
        assert!(check("[1, 2, 3, 4]", &mut budget).is_ok());
        assert_eq!(budget, 5);
        assert!(check("[1, 2, 3, 4, 5]", &mut budget).is_err());
    }

    #[test]
    fn a_syntax_error_is_left_to_the_parser_that_reports_it() {
        assert!(checked("a: [1, 2\n").is_ok());
    }
}
