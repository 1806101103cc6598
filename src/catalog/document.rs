//! The documents a catalog file may hold, as Rust types. The JSON Schema of
//! `catalog-schema/` is generated from these types, and `load` validates every document
//! against that same schema, so editors and the daemon agree on what is valid.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::api::DataSource;
use crate::api::catalog::VerificationSettings;

pub const IMAGE_LIST_API_VERSION: &str = "imagecatalog.dev/v1alpha1";
pub const IMAGE_LIST_KIND: &str = "ImageList";
pub const CVI_API_VERSION: &str = "virtualization.deckhouse.io/v1alpha2";
pub const CVI_KIND: &str = "ClusterVirtualImage";

/// Image names: what a ClusterVirtualImage's name may be, a DNS subdomain (`ubuntu-22.04`),
/// which is also a valid DVCR path component.
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
pub const NAME_MAX_LENGTH: usize = 128;

/// A list of images: the usual catalog document.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "ImageList")]
pub struct ImageList {
    /// Optional: `imagecatalog.dev/v1alpha1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("const" = IMAGE_LIST_API_VERSION))]
    pub api_version: Option<String>,
    /// Optional: `ImageList`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("const" = IMAGE_LIST_KIND))]
    pub kind: Option<String>,
    /// The images; each becomes one ClusterVirtualImage.
    pub images: Vec<CatalogEntry>,
}

/// One image of the catalog.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CatalogEntry {
    /// The name of the ClusterVirtualImage: a DNS subdomain of lowercase letters, digits,
    /// `-` and `.` (`ubuntu-22.04`), each dot-separated part beginning and ending with a
    /// letter or digit.
    #[schemars(length(min = 1, max = 128), regex(pattern = NAME_PATTERN))]
    pub name: String,
    /// Where the image comes from, exactly as in a ClusterVirtualImage's
    /// `spec.dataSource`.
    pub data_source: DataSource,
    /// Labels of the ClusterVirtualImage.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations of the ClusterVirtualImage.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// When and how the stored image is verified again (the catalog's default otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationSettings>,
}

/// A plain ClusterVirtualImage manifest, as `kubectl apply` would take it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(title = "ClusterVirtualImage")]
pub struct CviManifest {
    #[schemars(extend("const" = CVI_API_VERSION))]
    pub api_version: String,
    #[schemars(extend("const" = CVI_KIND))]
    pub kind: String,
    pub metadata: CviMetadata,
    pub spec: crate::api::ClusterVirtualImageSpec,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CviMetadata {
    #[schemars(length(min = 1, max = 128), regex(pattern = NAME_PATTERN))]
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Which kind of document a parsed YAML value is, by its `kind`.
pub enum DocumentKind {
    ImageList,
    Cvi,
}

pub fn kind_of(document: &Value) -> Result<DocumentKind, String> {
    match document.get("kind").and_then(Value::as_str) {
        Some(CVI_KIND) => Ok(DocumentKind::Cvi),
        Some(IMAGE_LIST_KIND) | None if document.get("images").is_some() => {
            Ok(DocumentKind::ImageList)
        }
        Some(IMAGE_LIST_KIND) => Ok(DocumentKind::ImageList),
        Some(other) => Err(format!(
            "a document of kind {other} has no place in a catalog: use `images:` (kind ImageList) or a ClusterVirtualImage manifest"
        )),
        None => Err(
            "not a catalog document: a document is a list of `images:` or a ClusterVirtualImage manifest"
                .into(),
        ),
    }
}

/// The JSON Schema of a catalog document (draft 2020-12), for editors and for `load`.
/// Objects refuse unknown fields, so a typo such as `checksums:` is an error rather than a
/// field silently dropped.
pub fn json_schema() -> Value {
    let mut generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let image_list = generator.subschema_for::<ImageList>();
    let manifest = generator.subschema_for::<CviManifest>();
    let mut definitions = serde_json::Map::new();
    for (name, schema) in generator.take_definitions(true) {
        definitions.insert(name, schema);
    }
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://imagecatalog.dev/schemas/catalog-v1alpha1.json",
        "title": "image-catalog catalog file",
        "description": "One YAML document of an image catalog: a list of images (kind ImageList, the default when `images` is present) or a ClusterVirtualImage manifest.",
        "oneOf": [image_list, manifest],
        "$defs": definitions,
    });
    drop_null_alternatives(&mut schema);
    close_objects(&mut schema);
    strip_kubernetes_extensions(&mut schema);
    json_schema_dialect(&mut schema);
    schema
}

/// The CRD's OpenAPI wording in JSON Schema's own, so that editors and strict validators
/// load the schema: patterns are ECMA-262 regular expressions, which have no
/// `(?P<name>...)` groups (the product's Go patterns lose their group names, and match
/// exactly what they matched); OpenAPI's `format: byte` is `contentEncoding: base64`, and
/// its `example` is `examples`. The CRDs keep the product's wording.
fn json_schema_dialect(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::String(pattern)) = map.get_mut("pattern") {
                *pattern = ecma_pattern(pattern);
            }
            if map.get("format").and_then(Value::as_str) == Some("byte") {
                map.remove("format");
                map.insert("contentEncoding".into(), "base64".into());
            }
            if let Some(example) = map.remove("example") {
                map.insert("examples".into(), Value::Array(vec![example]));
            }
            map.values_mut().for_each(json_schema_dialect);
        }
        Value::Array(items) => items.iter_mut().for_each(json_schema_dialect),
        _ => {}
    }
}

/// `(?P<name>` becomes `(?:`; an escaped `\(?P<` is left as it is.
fn ecma_pattern(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(at) = rest.find("(?P<") {
        let escaped = rest[..at].chars().rev().take_while(|c| *c == '\\').count() % 2 == 1;
        let name_end = rest[at + 4..].find('>');
        match name_end {
            Some(end) if !escaped => {
                out.push_str(&rest[..at]);
                out.push_str("(?:");
                rest = &rest[at + 4 + end + 1..];
            }
            _ => {
                out.push_str(&rest[..at + 4]);
                rest = &rest[at + 4..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// An absent optional field is left out, never written as `null`: removes the `null`
/// alternative schemars gives every `Option`, which would also turn each error inside such a
/// field into "matches none of anyOf".
fn drop_null_alternatives(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Array(types)) = map.get_mut("type") {
                types.retain(|t| t != "null");
                if types.len() == 1 {
                    let only = types.remove(0);
                    map.insert("type".into(), only);
                }
            }
            let is_null = |s: &Value| s.get("type").is_some_and(|t| t == "null");
            if let Some(Value::Array(choices)) = map.get("anyOf")
                && choices.len() == 2
                && choices.iter().any(is_null)
                && let Some(Value::Object(other)) = choices.iter().find(|s| !is_null(s)).cloned()
            {
                map.remove("anyOf");
                for (key, value) in other {
                    map.entry(key).or_insert(value);
                }
            }
            map.values_mut().for_each(drop_null_alternatives);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_null_alternatives),
        _ => {}
    }
}

/// Adds `additionalProperties: false` to every object schema that lists its properties.
fn close_objects(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            map.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// The CEL rules stay in the CRD (and `load` checks them with the CEL engine); in a JSON
/// Schema they would only confuse editors.
fn strip_kubernetes_extensions(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            map.retain(|key, _| !key.starts_with("x-kubernetes-"));
            map.values_mut().for_each(strip_kubernetes_extensions);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_kubernetes_extensions),
        _ => {}
    }
}

/// The schema of one document kind: the catalog schema with its `oneOf` narrowed down, so
/// an error names the field that is wrong rather than "matches none of two".
pub fn json_schema_for(kind: &DocumentKind) -> Value {
    let mut schema = json_schema();
    if let Some(map) = schema.as_object_mut() {
        let one_of = map.remove("oneOf");
        let index = match kind {
            DocumentKind::ImageList => 0,
            DocumentKind::Cvi => 1,
        };
        if let Some(Value::Array(mut choices)) = one_of
            && index < choices.len()
        {
            map.insert(
                "allOf".into(),
                Value::Array(vec![choices.swap_remove(index)]),
            );
        }
    }
    schema
}

/// The schema as it is checked in under `catalog-schema/`, for editors and CI validators:
/// [`json_schema`] with the rule that `type` names the one block that is set, which
/// `load` checks in code (with messages that say which block) and the CRD in CEL.
pub fn json_schema_text() -> String {
    let mut schema = json_schema();
    if let Some(data_source) = schema.pointer_mut("/$defs/DataSource")
        && let Some(map) = data_source.as_object_mut()
    {
        map.insert("allOf".into(), type_names_its_block());
    }
    // Serialising a Value cannot fail.
    serde_json::to_string_pretty(&schema).unwrap_or_default() + "\n"
}

/// For each source type with a block: that block is required under its type and absent
/// under any other (an Upload has none of them).
fn type_names_its_block() -> Value {
    let rules: Vec<Value> = [
        ("HTTP", "http"),
        ("ContainerImage", "containerImage"),
        ("ObjectRef", "objectRef"),
    ]
    .into_iter()
    .map(|(type_, block)| {
        json!({
            "if": {"properties": {"type": {"const": type_}}, "required": ["type"]},
            "then": {"required": [block]},
            "else": {"not": {"required": [block]}},
        })
    })
    .collect();
    Value::Array(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_groups_become_plain_groups_and_nothing_else_changes() {
        assert_eq!(
            ecma_pattern(r"^(?P<name>[a-z]+)(?::(?P<tag>\w+))?$"),
            r"^(?:[a-z]+)(?::(?:\w+))?$"
        );
        assert_eq!(ecma_pattern(r"^\(?P<x>$"), r"^\(?P<x>$", "an escaped paren");
        assert_eq!(ecma_pattern(r"^[0-9a-f]{64}$"), r"^[0-9a-f]{64}$");
    }

    #[test]
    fn the_schema_has_no_pattern_an_ecma_regex_cannot_compile() {
        let text = json_schema_text();
        assert!(!text.contains("(?P<"), "a Go/Python named group is left");
        assert!(
            text.contains("(?:(?:(?:localhost|"),
            "the image pattern is still there"
        );
    }
}
