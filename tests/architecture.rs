//! The shape of the code: the module import graph has no cycle, and files stay small enough to
//! be read as one room with one job. Read from `src/` as text: no build of the crate needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Lines a source file of the crate may have.
const MAX_LINES: usize = 600;

fn source_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn crate_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `src/import/pipeline/mod.rs` → `import::pipeline`; the crate root is "".
fn module_of(file: &Path) -> String {
    let relative = file.strip_prefix(crate_root().join("src")).unwrap();
    let mut parts: Vec<String> = relative
        .with_extension("")
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without comments and without its inline `mod tests`.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a `use` tree names, braces expanded: `a::{b, c::{d}}` → `a::b`, `a::c::d`.
fn expand_use(tree: &str) -> Vec<String> {
    let tree: String = tree.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap_or_default().to_string()];
    };
    let prefix = &tree[..open];
    let close = tree
        .rfind('}')
        .filter(|&close| close > open)
        .unwrap_or(tree.len());
    let inner = &tree[open + 1..close];
    let mut depth = 0;
    let mut start = 0;
    let mut paths = Vec::new();
    for (at, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                paths.push(&inner[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    paths.push(&inner[start..]);
    paths
        .into_iter()
        .filter(|path| !path.is_empty())
        .flat_map(expand_use)
        .map(|path| format!("{prefix}{path}"))
        .collect()
}

/// The paths below `crate::` or `super::` a file's code names, in `use` items and inline.
fn named_paths(code: &str) -> Vec<String> {
    let mut paths = Vec::new();
    let mut statement: Option<String> = None;
    for line in code.lines() {
        let trimmed = line.trim_start();
        let item = trimmed
            .strip_prefix("pub ")
            .or_else(|| trimmed.strip_prefix("pub(crate) "))
            .or_else(|| trimmed.strip_prefix("pub(super) "))
            .unwrap_or(trimmed);
        if statement.is_none()
            && let Some(tree) = item.strip_prefix("use ")
        {
            statement = Some(String::new());
            statement.as_mut().unwrap().push_str(tree);
        } else if let Some(open) = statement.as_mut() {
            open.push_str(trimmed);
        }
        if let Some(tree) = statement.take_if(|tree| tree.contains(';')) {
            paths.extend(expand_use(tree.split(';').next().unwrap_or_default()));
        }
    }
    for anchor in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(anchor) {
            let start = from + at;
            let end = code[start..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |n| start + n);
            paths.push(code[start..end].trim_end_matches(':').to_string());
            from = end;
        }
    }
    paths
}

/// The module a path resolves into (its longest prefix that is a module), seen from `from`.
fn target(path: &str, from: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut parts: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = if from.is_empty() {
        Vec::new()
    } else {
        from.split("::").collect()
    };
    match parts.first() {
        Some(&"crate") => {
            base.clear();
            parts.remove(0);
        }
        Some(&"super") => {
            // `super` of a `foo.rs` or a `foo/mod.rs` module is its parent either way.
            while parts.first() == Some(&"super") {
                base.pop();
                parts.remove(0);
            }
        }
        _ => return None,
    }
    base.extend(parts);
    while !base.is_empty() {
        let candidate = base.join("::");
        if modules.contains(&candidate) {
            return Some(candidate);
        }
        base.pop();
    }
    None
}

fn is_within(inner: &str, outer: &str) -> bool {
    outer.is_empty() || inner == outer || inner.starts_with(&format!("{outer}::"))
}

/// Module → modules it imports, leaving out its own ancestors and descendants (a module and
/// its submodules are one room: a child using its parent's types is no cycle).
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    source_files(&crate_root().join("src"), &mut files);
    let files: Vec<(String, PathBuf)> = files
        .into_iter()
        .map(|file| (module_of(&file), file))
        .filter(|(module, _)| module != "tests" && !module.ends_with("::tests"))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(module, _)| module.clone()).collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &files {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        let imports: BTreeSet<String> = named_paths(&code)
            .iter()
            .filter_map(|path| target(path, module, &modules))
            .filter(|to| !is_within(to, module) && !is_within(module, to))
            .collect();
        graph.insert(module.clone(), imports);
    }
    graph
}

/// A cycle through the graph, if any (depth-first search, the path to the first back edge).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_module_import_graph_has_no_cycle() {
    let graph = import_graph();
    // The reader must see the edges it is meant to: the data flow's own.
    assert!(
        graph["import::resume"].contains("import::pipeline"),
        "{graph:?}"
    );
    assert!(graph["sync::controller"].contains("catalog"), "{graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "the modules import each other in a cycle: {}; move what they share into a \
             module both import",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle_and_reads_braced_imports() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", &["b"][..]),
        ("b", &["c"][..]),
        ("c", &["a"][..]),
        ("d", &[][..]),
    ]
    .into_iter()
    .map(|(node, to)| (node.into(), to.iter().map(|t| t.to_string()).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        expand_use("crate::import::{pipeline::{self, Sink}, checkpoint}"),
        [
            "crate::import::pipeline::self",
            "crate::import::pipeline::Sink",
            "crate::import::checkpoint"
        ]
    );
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let mut files = Vec::new();
    source_files(&crate_root().join("src"), &mut files);
    let too_long: Vec<(String, usize)> = files
        .iter()
        .map(|file| {
            let lines = std::fs::read_to_string(file).unwrap().lines().count();
            let relative = file.strip_prefix(crate_root()).unwrap();
            (relative.to_string_lossy().into_owned(), lines)
        })
        .filter(|(_, lines)| *lines > MAX_LINES)
        .collect();
    assert!(
        too_long.is_empty(),
        "over {MAX_LINES} lines: {too_long:?}; split them along their seams"
    );
}
