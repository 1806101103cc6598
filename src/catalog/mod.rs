//! The catalog file format: parse YAML with source positions, validate every document, and
//! produce the images the catalog describes. Pure: shared by `image-catalog validate`,
//! `image-catalog plan` and the daemon, so all three judge a commit the same way.

pub mod document;
pub mod limits;
pub mod positions;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

use crate::api::DataSource;
use crate::api::catalog::{VerificationSettings, keys};
use document::{CatalogEntry, CviManifest, DocumentKind, ImageList};
use positions::{DocumentPositions, Position};

/// One file of the catalog, as read from Git or from disk.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path people know the file by (relative to the repository root).
    pub path: String,
    pub content: Vec<u8>,
}

/// A place in a catalog file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl Location {
    fn new(file: &str, position: Position) -> Self {
        Self {
            file: file.to_string(),
            line: position.line.max(1),
            column: position.column.max(1),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Something wrong with the catalog, where it is and what to do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// One image the catalog describes.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogImage {
    pub name: String,
    /// Where the image's name is written.
    pub location: Location,
    pub data_source: DataSource,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub verification: Option<VerificationSettings>,
}

/// Reads every file of a catalog. Either every image, or every problem found (sorted by
/// place); never a part of the catalog.
pub fn load(files: &[SourceFile]) -> Result<Vec<CatalogImage>, Vec<Problem>> {
    let mut images = Vec::new();
    let mut problems = Vec::new();
    let mut node_budget = limits::MAX_NODES;
    for file in files {
        load_file(file, &mut node_budget, &mut images, &mut problems);
    }
    let mut first_place: HashMap<&str, &Location> = HashMap::new();
    for image in &images {
        if let Some(first) = first_place.get(image.name.as_str()) {
            problems.push(Problem {
                location: image.location.clone(),
                message: format!(
                    "image {} is already defined at {first}; each name may appear once in a catalog",
                    image.name
                ),
            });
        } else {
            first_place.insert(&image.name, &image.location);
        }
    }
    if problems.is_empty() {
        Ok(images)
    } else {
        problems.sort();
        problems.dedup();
        Err(problems)
    }
}

fn load_file(
    file: &SourceFile,
    node_budget: &mut usize,
    images: &mut Vec<CatalogImage>,
    problems: &mut Vec<Problem>,
) {
    let at = |position: Position, message: String| Problem {
        location: Location::new(&file.path, position),
        message,
    };
    let text = match std::str::from_utf8(&file.content) {
        Ok(text) => text,
        Err(error) => {
            problems.push(at(
                Position { line: 1, column: 1 },
                format!("the file is not UTF-8 text ({error})"),
            ));
            return;
        }
    };
    // Before anything that holds the file's nodes in memory.
    if let Err(exceeded) = limits::check(text, node_budget) {
        problems.push(at(exceeded.position, exceeded.message));
        return;
    }
    let positions = positions::index(text);
    let empty = DocumentPositions::default();
    for (number, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(document) {
            Ok(value) => value,
            Err(error) => {
                let position = error
                    .location()
                    .map_or(Position::default(), |location| Position {
                        line: location.line(),
                        column: location.column(),
                    });
                let message = error.to_string();
                // serde_yaml appends " at line L column C"; the location says that already.
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_string();
                problems.push(at(position, format!("YAML syntax: {message}")));
                return;
            }
        };
        let positions = positions.get(number).unwrap_or(&empty);
        for (pointer, position) in &positions.duplicate_keys {
            problems.push(at(
                *position,
                format!(
                    "{} appears twice in one mapping; YAML keeps only one of them",
                    field_path(pointer)
                ),
            ));
        }
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        let document = DocumentInFile {
            file: &file.path,
            value: &value,
            positions,
        };
        match document.images() {
            Ok(found) => images.extend(found),
            Err(found) => problems.extend(found),
        }
    }
}

struct DocumentInFile<'a> {
    file: &'a str,
    value: &'a Value,
    positions: &'a DocumentPositions,
}

impl DocumentInFile<'_> {
    fn problem(&self, pointer: &str, message: String) -> Problem {
        Problem {
            location: Location::new(self.file, self.positions.value(pointer)),
            message,
        }
    }

    fn images(&self) -> Result<Vec<CatalogImage>, Vec<Problem>> {
        let kind = document::kind_of(self.value).map_err(|message| {
            let pointer = if self.value.get("kind").is_some() {
                "/kind"
            } else {
                ""
            };
            vec![self.problem(pointer, message)]
        })?;
        // Schema problems do not stop the other checks when the document still reads as
        // its type: a commit's author sees every problem at once.
        let schema_problems = self.check_schema(&kind).err().unwrap_or_default();
        let typed = match kind {
            DocumentKind::ImageList => self.typed::<ImageList>().map(|list| (Some(list), None)),
            DocumentKind::Cvi => self
                .typed::<CviManifest>()
                .map(|manifest| (None, Some(manifest))),
        };
        let (list, manifest) = match typed {
            Ok(typed) => typed,
            Err(problems) if schema_problems.is_empty() => return Err(problems),
            Err(_) => return Err(schema_problems),
        };
        let images = match (list, manifest) {
            (Some(list), _) => list
                .images
                .into_iter()
                .enumerate()
                .map(|(index, entry)| self.entry(&format!("/images/{index}"), entry))
                .collect(),
            (None, Some(manifest)) => vec![self.manifest(manifest)],
            (None, None) => Vec::new(),
        };
        let mut problems = schema_problems;
        let mut found = Vec::new();
        for (pointer, image) in images {
            match self.check_image(&pointer, &image) {
                Ok(()) => found.push(image),
                Err(mut more) => problems.append(&mut more),
            }
        }
        if problems.is_empty() {
            Ok(found)
        } else {
            Err(problems)
        }
    }

    fn check_schema(&self, kind: &DocumentKind) -> Result<(), Vec<Problem>> {
        let validator = validator(kind);
        let problems: Vec<Problem> = validator
            .iter_errors(self.value)
            .map(|error| {
                let pointer = error.instance_path().as_str().to_string();
                let (position, message) = match error.kind() {
                    jsonschema::error::ValidationErrorKind::AdditionalProperties {
                        unexpected,
                    } => {
                        let first = unexpected.first().cloned().unwrap_or_default();
                        let field = format!("{pointer}/{}", positions::pointer_segment(&first));
                        (
                            self.positions.key(&field),
                            format!(
                                "unknown field {}; check its spelling against catalog-schema/README.md",
                                field_path(&field)
                            ),
                        )
                    }
                    jsonschema::error::ValidationErrorKind::Required { property } => (
                        self.positions.value(&pointer),
                        format!(
                            "{} is required",
                            field_path(&format!(
                                "{pointer}/{}",
                                property.as_str().unwrap_or_default()
                            ))
                        ),
                    ),
                    jsonschema::error::ValidationErrorKind::Pattern { pattern } => (
                        self.positions.value(&pointer),
                        pattern_message(&field_path(&pointer), pattern, error.instance()),
                    ),
                    _ => (
                        self.positions.value(&pointer),
                        format!("{}: {}", field_path(&pointer), error.masked()),
                    ),
                };
                Problem {
                    location: Location::new(self.file, position),
                    message,
                }
            })
            .collect();
        // One field can break several keywords (pattern and length, say): say it once.
        let mut problems = problems;
        problems.dedup_by(|later, earlier| later.location == earlier.location);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, Vec<Problem>> {
        // The schema has passed, so this only fails where schema and types disagree.
        T::deserialize(self.value)
            .map_err(|error| vec![self.problem("", format!("cannot read the document: {error}"))])
    }

    fn entry(&self, pointer: &str, entry: CatalogEntry) -> (String, CatalogImage) {
        let image = CatalogImage {
            location: Location::new(self.file, self.positions.value(&format!("{pointer}/name"))),
            name: entry.name,
            data_source: entry.data_source,
            labels: entry.labels,
            annotations: entry.annotations,
            verification: entry.verification,
        };
        (pointer.to_string(), image)
    }

    fn manifest(&self, manifest: CviManifest) -> (String, CatalogImage) {
        let mut annotations = manifest.metadata.annotations;
        // A plain manifest carries its schedule as the annotation the daemon would write.
        let schedule = annotations.remove(keys::VERIFY_SCHEDULE);
        let upstream = annotations.remove(keys::VERIFY_UPSTREAM);
        let verification =
            (schedule.is_some() || upstream.is_some()).then(|| VerificationSettings {
                schedule,
                check_upstream: upstream.map(|value| value == "true"),
            });
        let image = CatalogImage {
            location: Location::new(self.file, self.positions.value("/metadata/name")),
            name: manifest.metadata.name,
            data_source: manifest.spec.data_source,
            labels: manifest.metadata.labels,
            annotations,
            verification,
        };
        (String::new(), image)
    }

    /// Rules beyond the schema: the CEL rules of the CRD, label and annotation keys, the
    /// schedule.
    fn check_image(&self, pointer: &str, image: &CatalogImage) -> Result<(), Vec<Problem>> {
        let mut problems = Vec::new();
        let (source_pointer, labels_pointer, annotations_pointer) = if pointer.is_empty() {
            (
                "/spec/dataSource".to_string(),
                "/metadata/labels".to_string(),
                "/metadata/annotations".to_string(),
            )
        } else {
            (
                format!("{pointer}/dataSource"),
                format!("{pointer}/labels"),
                format!("{pointer}/annotations"),
            )
        };
        if let Ok(value) = serde_json::to_value(&image.data_source)
            && let Err(errors) = kube::core::cel::validate_cel_schema::<DataSource>(&value, None)
        {
            for error in errors.into_vec() {
                let field = error.field_path.trim_start_matches('.').replace('.', "/");
                let at = if field.is_empty() {
                    source_pointer.clone()
                } else {
                    format!("{source_pointer}/{field}")
                };
                problems.push(self.problem(&at, error.message));
            }
        }
        for (key, value) in &image.labels {
            let at = format!("{labels_pointer}/{}", positions::pointer_segment(key));
            if let Err(message) = check_key(key).and_then(|()| check_label_value(value)) {
                problems.push(self.problem(&at, format!("label {key}: {message}")));
            }
        }
        for key in image.annotations.keys() {
            let at = format!("{annotations_pointer}/{}", positions::pointer_segment(key));
            if let Err(message) = check_key(key) {
                problems.push(self.problem(&at, format!("annotation {key}: {message}")));
            }
        }
        if let Some(schedule) = image
            .verification
            .as_ref()
            .and_then(|v| v.schedule.as_deref())
        {
            let at = if pointer.is_empty() {
                format!(
                    "/metadata/annotations/{}",
                    positions::pointer_segment(keys::VERIFY_SCHEDULE)
                )
            } else {
                format!("{pointer}/verification/schedule")
            };
            if let Err(message) = crate::schedule::parse(schedule) {
                problems.push(self.problem(&at, message));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn validator(kind: &DocumentKind) -> &'static jsonschema::Validator {
    static IMAGE_LIST: OnceLock<jsonschema::Validator> = OnceLock::new();
    static CVI: OnceLock<jsonschema::Validator> = OnceLock::new();
    let cell = match kind {
        DocumentKind::ImageList => &IMAGE_LIST,
        DocumentKind::Cvi => &CVI,
    };
    cell.get_or_init(|| {
        // The schema is generated from our own types; a test compiles it, so failing here
        // is a programming error caught before release.
        #[allow(clippy::expect_used)]
        jsonschema::validator_for(&document::json_schema_for(kind))
            .expect("the generated catalog schema compiles")
    })
}

/// `/images/3/dataSource/http` as people read it: `images[3].dataSource.http`.
/// A pattern the value missed, said as the rule it stands for where there is one.
fn pattern_message(field: &str, pattern: &str, value: &serde_json::Value) -> String {
    let shown = value
        .as_str()
        .map_or_else(|| value.to_string(), |text| format!("{text:?}"));
    if pattern == document::NAME_PATTERN {
        format!(
            "{field}: {shown} is not a valid name: lower-case letters, digits and '-', in parts separated by single dots, each starting and ending with a letter or digit (the ClusterVirtualImage's own rule)"
        )
    } else if field.ends_with(".http.url") {
        format!("{field}: {shown} is not an http:// or https:// URL; only those can be imported")
    } else if field.ends_with(".containerImage.image") {
        format!(
            "{field}: {shown} is not a container image reference: [registry[:port]/]path[:tag][@digest], the path in lower case, as in registry.example.com/images/debian:12"
        )
    } else {
        format!("{field}: {shown} does not match {pattern:?}")
    }
}

pub fn field_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    if path.is_empty() {
        "the document".into()
    } else {
        path
    }
}

/// A label or annotation key: `[prefix/]name`, as Kubernetes checks it; keys under
/// `imagecatalog.dev/` belong to the daemon.
fn check_key(key: &str) -> Result<(), String> {
    if key.starts_with(keys::PREFIX) {
        return Err(format!(
            "keys under {} are set by image-catalog itself; use another prefix",
            keys::PREFIX
        ));
    }
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let valid = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !valid {
            return Err(format!(
                "the prefix {prefix:?} must be a DNS subdomain: lowercase letters, digits, '-' and '.'"
            ));
        }
    }
    if name.is_empty() || name.len() > 63 || !is_label_text(name) {
        return Err("the name part must be 1-63 characters: letters, digits, '-', '_' and '.', beginning and ending with a letter or digit".into());
    }
    Ok(())
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_label_text(value)) {
        Ok(())
    } else {
        Err(format!(
            "the value {value:?} must be at most 63 characters: letters, digits, '-', '_' and '.', beginning and ending with a letter or digit"
        ))
    }
}

fn is_label_text(text: &str) -> bool {
    let edges_ok = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && text
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    edges_ok
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Reads the catalog files under `root/path` on disk (`*.yaml`, `*.yml`, recursively, in
/// a stable order), named relative to `root`.
/// The catalog files at a path given on the command line, relative or absolute; each file is
/// named as the user would write it.
pub fn read_local(path: &std::path::Path) -> std::io::Result<Vec<SourceFile>> {
    if path.is_absolute() {
        let mut files = read_dir(std::path::Path::new("/"), &path.to_string_lossy())?;
        for file in &mut files {
            if !file.path.starts_with('/') {
                file.path.insert(0, '/');
            }
        }
        return Ok(files);
    }
    read_dir(std::path::Path::new("."), &path.to_string_lossy())
}

pub fn read_dir(root: &std::path::Path, path: &str) -> std::io::Result<Vec<SourceFile>> {
    let start = root.join(path.trim_start_matches('/'));
    let mut files = Vec::new();
    if start.is_file() {
        files.push(SourceFile {
            path: path.to_string(),
            content: std::fs::read(&start)?,
        });
        return Ok(files);
    }
    let mut pending = vec![start];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') {
                continue; // .git and other hidden folders
            }
            if entry.file_type()?.is_dir() {
                pending.push(path);
            } else if name.ends_with(".yaml") || name.ends_with(".yml") {
                let relative = path.strip_prefix(root).unwrap_or(&path);
                files.push(SourceFile {
                    path: relative.to_string_lossy().into_owned(),
                    content: std::fs::read(&path)?,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

#[cfg(test)]
mod tests;
