//! Where each node of a YAML stream sits in its file, so a problem found in the parsed value
//! can be reported as `file:line:column`. serde_yaml gives values without positions; this
//! walks the same text with yaml-rust2's event parser and records the position of every node
//! under its JSON pointer (`/images/3/dataSource/http/url`).

use std::collections::{HashMap, HashSet};

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// The positions of one YAML document's nodes.
#[derive(Debug, Default, Clone)]
pub struct DocumentPositions {
    /// Where the document starts.
    pub start: Position,
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
    /// Keys that appear twice in one mapping, with the position of the second one.
    pub duplicate_keys: Vec<(String, Position)>,
}

impl DocumentPositions {
    /// The position of the node at `pointer`, or of its nearest ancestor that has one.
    pub fn value(&self, pointer: &str) -> Position {
        let mut pointer = pointer;
        loop {
            if let Some(position) = self.values.get(pointer) {
                return *position;
            }
            match pointer.rfind('/') {
                Some(cut) => pointer = &pointer[..cut],
                None => return self.start,
            }
        }
    }

    /// The position of the key of the mapping entry at `pointer` (better than the value for
    /// "unknown field" problems), else that of the value.
    pub fn key(&self, pointer: &str) -> Position {
        self.keys
            .get(pointer)
            .copied()
            .unwrap_or_else(|| self.value(pointer))
    }
}

/// Escapes one JSON pointer segment (RFC 6901).
pub fn pointer_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

enum Frame {
    Mapping {
        pointer: String,
        pending_key: Option<String>,
        seen: HashSet<String>,
    },
    Sequence {
        pointer: String,
        next_index: usize,
    },
}

#[derive(Default)]
struct Recorder {
    documents: Vec<DocumentPositions>,
    stack: Vec<Frame>,
}

fn position(mark: Marker) -> Position {
    Position {
        line: mark.line(),
        // yaml-rust2 counts lines from 1 but columns from 0.
        column: mark.col() + 1,
    }
}

impl Recorder {
    fn current(&mut self) -> Option<&mut DocumentPositions> {
        self.documents.last_mut()
    }

    /// Claims the place of a new node in its parent: its pointer, or None when the node is a
    /// mapping key (then it is remembered as the pending key).
    fn place(&mut self, key_text: Option<&str>, at: Position) -> Option<String> {
        let mut duplicate = None;
        let mut key_pointer = None;
        let placed = match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Sequence {
                pointer,
                next_index,
            }) => {
                let child = format!("{pointer}/{next_index}");
                *next_index += 1;
                Some(child)
            }
            Some(Frame::Mapping {
                pointer,
                pending_key,
                seen,
            }) => match pending_key.take() {
                Some(key) => Some(format!("{pointer}/{}", pointer_segment(&key))),
                None => {
                    // A key; complex (non-scalar) keys are recorded under an empty name.
                    let key = key_text.unwrap_or_default().to_string();
                    let child = format!("{pointer}/{}", pointer_segment(&key));
                    if !seen.insert(key.clone()) {
                        duplicate = Some((child.clone(), at));
                    }
                    key_pointer = Some(child);
                    *pending_key = Some(key);
                    None
                }
            },
        };
        if let Some(document) = self.current() {
            if let Some(pointer) = key_pointer {
                // A block mapping's start event comes after its first key has been scanned,
                // so the mapping is placed at its earliest key.
                if let Some((parent, _)) = pointer.rsplit_once('/')
                    && let Some(start) = document.values.get_mut(parent)
                    && at < *start
                {
                    *start = at;
                }
                document.keys.entry(pointer).or_insert(at);
            }
            if let Some(duplicate) = duplicate {
                document.duplicate_keys.push(duplicate);
            }
            if let Some(pointer) = &placed {
                document.values.entry(pointer.clone()).or_insert(at);
            }
        }
        placed
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let at = position(mark);
        match event {
            Event::DocumentStart => {
                self.stack.clear();
                self.documents.push(DocumentPositions {
                    start: at,
                    ..Default::default()
                });
            }
            Event::Scalar(text, ..) => {
                self.place(Some(&text), at);
            }
            Event::Alias(..) => {
                self.place(None, at);
            }
            Event::MappingStart(..) => {
                // A mapping used as a key gets a placeholder pointer; nothing inside it is
                // addressable by JSON pointer anyway.
                let pointer = self.place(None, at).unwrap_or_else(|| "/?".into());
                self.stack.push(Frame::Mapping {
                    pointer,
                    pending_key: None,
                    seen: HashSet::new(),
                });
            }
            Event::SequenceStart(..) => {
                let pointer = self.place(None, at).unwrap_or_else(|| "/?".into());
                self.stack.push(Frame::Sequence {
                    pointer,
                    next_index: 0,
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// The positions of every document of `text`. A syntax error yields the documents read so
/// far (serde_yaml reports the error itself, with its position).
pub fn index(text: &str) -> Vec<DocumentPositions> {
    let mut recorder = Recorder::default();
    let mut parser = Parser::new_from_str(text);
    let _ = parser.load(&mut recorder, true);
    recorder.documents
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# a comment
images:
  - name: alpine
    dataSource:
      type: HTTP
      http: {url: 'https://x/a.qcow2'}
  - name: debian
---
kind: ClusterVirtualImage
metadata:
  name: other
";

    #[test]
    fn every_node_is_found_at_its_line_and_column() {
        let documents = index(TEXT);
        assert_eq!(documents.len(), 2);
        let first = &documents[0];
        assert_eq!(
            first.value("/images/0/name"),
            Position {
                line: 3,
                column: 11
            }
        );
        assert_eq!(
            first.value("/images/0/dataSource/http/url"),
            Position {
                line: 6,
                column: 19
            }
        );
        assert_eq!(first.key("/images/1/name"), Position { line: 7, column: 5 });
        assert_eq!(
            documents[1].value("/metadata/name"),
            Position {
                line: 11,
                column: 9
            }
        );
    }

    #[test]
    fn a_missing_node_is_located_at_its_nearest_parent() {
        let documents = index(TEXT);
        assert_eq!(
            documents[0].value("/images/1/dataSource/http"),
            documents[0].value("/images/1")
        );
    }

    #[test]
    fn duplicate_keys_are_noticed() {
        let documents = index("images: []\nimages: [1]\n");
        assert_eq!(
            documents[0].duplicate_keys,
            vec![("/images".to_string(), Position { line: 2, column: 1 })]
        );
    }

    #[test]
    fn keys_with_slashes_are_escaped_in_pointers() {
        let documents = index("labels:\n  example.com/tier: gold\n");
        assert_eq!(
            documents[0].value("/labels/example.com~1tier"),
            Position {
                line: 2,
                column: 21
            }
        );
    }
}
