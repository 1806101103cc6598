//! Where an image comes from: the `spec.dataSource` block shared by ClusterVirtualImage and
//! VirtualImage, with the validation patterns of the product documentation.

use kube::core::{Reason, Rule};
use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

/// `http.url`: exactly the pattern of the product documentation.
pub const URL_PATTERN: &str =
    r"^http[s]?:\/\/(?:[a-zA-Z]|[0-9]|[$-_@.&+]|[!*\(\),]|(?:%[0-9a-fA-F][0-9a-fA-F]))+$";

/// `containerImage.image`: exactly the pattern of the product documentation.
pub const IMAGE_PATTERN: &str = r"^(?P<name>(?:(?P<domain>(?:(?:localhost|[\w-]+(?:\.[\w-]+)+)(?::\d+)?)|[\w]+:\d+)/)?(?P<image>[a-z0-9_.-]+(?:/[a-z0-9_.-]+)*))(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[+.-_][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?$";

pub const MD5_PATTERN: &str = r"^[0-9a-fA-F]{32}$";
pub const SHA256_PATTERN: &str = r"^[0-9a-fA-F]{64}$";

/// A Kubernetes namespace name (RFC 1123 label).
pub const NAMESPACE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The kinds of source an image can be created from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum DataSourceType {
    /// From a file published on an HTTP/HTTPS service at a given URL.
    #[serde(rename = "HTTP")]
    Http,
    /// From another image stored in a container registry.
    ContainerImage,
    /// From an existing resource.
    ObjectRef,
    /// From data uploaded by the user via a special interface.
    Upload,
}

impl DataSourceType {
    /// Every source type.
    pub const ALL: [Self; 4] = [
        Self::Http,
        Self::ContainerImage,
        Self::ObjectRef,
        Self::Upload,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "HTTP",
            Self::ContainerImage => "ContainerImage",
            Self::ObjectRef => "ObjectRef",
            Self::Upload => "Upload",
        }
    }
}

impl std::fmt::Display for DataSourceType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Origin of a ClusterVirtualImage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = one_source_block_rules)]
pub struct DataSource {
    /// The following image sources are available for creating an image:
    ///
    /// * `HTTP`: From a file published on an HTTP/HTTPS service at a given URL.
    /// * `ContainerImage`: From another image stored in a container registry.
    /// * `ObjectRef`: From an existing resource.
    /// * `Upload`: From data uploaded by the user via a special interface.
    #[serde(rename = "type")]
    pub type_: DataSourceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<ContainerImageSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<ObjectRef>,
}

/// Origin of a VirtualImage: the same sources, with references resolved in the image's own
/// namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = one_source_block_rules)]
pub struct NamespacedDataSource {
    /// The following image sources are available for creating an image: `HTTP`,
    /// `ContainerImage`, `ObjectRef`, `Upload`.
    #[serde(rename = "type")]
    pub type_: DataSourceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_image: Option<ContainerImageSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_ref: Option<NamespacedObjectRef>,
}

/// Fill the image with data from an external URL. The following schemas are supported:
///
/// * HTTP
/// * HTTPS
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    /// URL of the file for creating an image. The following file formats are supported:
    /// qcow2, vmdk, vdi, iso, raw. The file can be compressed into an archive in one of the
    /// following formats: gz, xz.
    #[schemars(regex(pattern = URL_PATTERN), extend("example" = "https://mirror.example.com/images/slackware-15.qcow.gz"))]
    pub url: String,
    /// CA chain in Base64 format to verify the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "byte", "example" = "YWFhCg=="))]
    pub ca_bundle: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<Checksum>,
}

/// Checksum to verify integrity and consistency of the downloaded file. The file must match all
/// specified checksums.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct Checksum {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 32, max = 32), regex(pattern = MD5_PATTERN), extend("example" = "f3b59bed9f91e32fac1210184fcff6f5"))]
    pub md5: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 64, max = 64), regex(pattern = SHA256_PATTERN), extend("example" = "78be890d71dde316c412da2ce8332ba47b9ce7a29d573801d2777e01aa20b9b5"))]
    pub sha256: Option<String>,
}

/// Use an image stored in external container registry. Only registries with enabled TLS
/// protocol are supported. To provide a custom Certificate Authority (CA) chain, use the
/// `caBundle` field.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerImageSource {
    /// Path to the image in the container registry.
    #[schemars(regex(pattern = IMAGE_PATTERN), extend("example" = "registry.example.com/images/slackware:15"))]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<ImagePullSecret>,
    /// CA chain in Base64 format to verify the container registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "byte", "example" = "YWFhCg=="))]
    pub ca_bundle: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ImagePullSecret {
    /// Name of the secret keeping container registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Namespace where `imagePullSecret` is located.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Kinds of existing resources an image can be made from.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ObjectRefKind {
    ClusterVirtualImage,
    VirtualImage,
    VirtualDisk,
}

impl ObjectRefKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterVirtualImage => "ClusterVirtualImage",
            Self::VirtualImage => "VirtualImage",
            Self::VirtualDisk => "VirtualDisk",
        }
    }

    /// Whether a reference to this kind needs a namespace.
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Self::ClusterVirtualImage)
    }
}

impl std::fmt::Display for ObjectRefKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Use an existing VirtualImage, ClusterVirtualImage, or VirtualDisk resource to create an image.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(transform = namespace_for_namespaced_kinds)]
pub struct ObjectRef {
    /// Kind of the existing VirtualImage, ClusterVirtualImage, or VirtualDisk resource.
    pub kind: ObjectRefKind,
    /// Name of the existing VirtualImage, ClusterVirtualImage, or VirtualDisk resource.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Namespace where the VirtualImage or VirtualDisk resource is located.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = NAMESPACE_PATTERN))]
    pub namespace: Option<String>,
}

/// Use an existing resource to create an image; namespaced kinds are looked up in the image's
/// own namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct NamespacedObjectRef {
    /// Kind of the existing VirtualImage, ClusterVirtualImage, or VirtualDisk resource.
    pub kind: ObjectRefKind,
    /// Name of the existing resource.
    #[schemars(length(min = 1))]
    pub name: String,
}

/// The CEL rules that make `type` choose exactly one block: the block named by `type` is
/// required and every other block is forbidden. One rule per block and direction, so the
/// apiserver's message names the offending field.
fn one_source_block_rules(schema: &mut Schema) {
    const BLOCKS: [(&str, &str); 3] = [
        ("http", "HTTP"),
        ("containerImage", "ContainerImage"),
        ("objectRef", "ObjectRef"),
    ];
    for (block, type_) in BLOCKS {
        add_rule(
            schema,
            Rule::new(format!("self.type != '{type_}' || has(self.{block})"))
                .message(format!("{block} is required when type is {type_}").as_str())
                .field_path(format!(".{block}"))
                .reason(Reason::FieldValueRequired),
        );
        add_rule(
            schema,
            Rule::new(format!("self.type == '{type_}' || !has(self.{block})"))
                .message(format!("{block} must not be set when type is not {type_}").as_str())
                .field_path(format!(".{block}"))
                .reason(Reason::FieldValueForbidden),
        );
    }
}

fn namespace_for_namespaced_kinds(schema: &mut Schema) {
    add_rule(
        schema,
        // `namespace` is a reserved word in Kubernetes CEL: fields of that name are reached as
        // `__namespace__`.
        Rule::new(
            "self.kind == 'ClusterVirtualImage' || (has(self.__namespace__) && size(self.__namespace__) > 0)",
        )
            .message("namespace is required when kind is VirtualImage or VirtualDisk")
            .field_path(".namespace")
            .reason(Reason::FieldValueRequired),
    );
}

fn add_rule(schema: &mut Schema, rule: Rule) {
    // A Rule is plain strings, so serialising it cannot fail; the CRD drift test and the CEL
    // tests would catch a rule that went missing.
    let _ = kube::core::validate(schema, rule);
}
