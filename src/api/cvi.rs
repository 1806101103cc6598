//! ClusterVirtualImage: the platform's cluster-wide VM image
//! (`virtualization.deckhouse.io/v1alpha2`).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::datasource::DataSource;
use super::status::ImageStatus;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "virtualization.deckhouse.io",
    version = "v1alpha2",
    kind = "ClusterVirtualImage",
    plural = "clustervirtualimages",
    singular = "clustervirtualimage",
    shortname = "cvi",
    shortname = "cvis",
    category = "virtualization-cluster",
    category = "virtualization",
    status = "ImageStatus",
    cel,
    doc = "Describes a virtual disk image that can be used as a data source for new VirtualDisks or an installation image (iso) to be mounted in VirtualMachines directly. This resource type is available for all namespaces in the cluster. With this resource in the cluster, a container image is created and stored in a dedicated Deckhouse Virtualization Container Registry (DVCR).",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "CDROM", type_ = "boolean", json_path = ".status.cdrom"),
    printcolumn(name = "Progress", type_ = "string", json_path = ".status.progress"),
    printcolumn(name = "StoredSize", type_ = "string", json_path = ".status.size.stored", priority = "1"),
    printcolumn(name = "UnpackedSize", type_ = "string", json_path = ".status.size.unpacked", priority = "1"),
    printcolumn(name = "Registry URL", type_ = "string", json_path = ".status.target.registryURL", priority = "1"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = kube::core::Rule::new("self.metadata.name.size() <= 128").message("The name must be no longer than 128 characters."),
)]
#[serde(rename_all = "camelCase")]
/// The desired image: where it comes from.
pub struct ClusterVirtualImageSpec {
    /// Origin of the image.
    pub data_source: DataSource,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{DataSourceType, ObjectRefKind};

    /// The manifests of the product documentation (and our other examples), as shipped in
    /// `examples/cvi/`.
    const EXAMPLES: [(&str, &str); 5] = [
        (
            "ubuntu-22.04",
            include_str!("../../examples/cvi/ubuntu-22.04.yaml"),
        ),
        (
            "ubuntu-2204",
            include_str!("../../examples/cvi/ubuntu-2204-container-image.yaml"),
        ),
        (
            "some-image",
            include_str!("../../examples/cvi/some-image-upload.yaml"),
        ),
        (
            "slackware-15",
            include_str!("../../examples/cvi/slackware-15-checksums.yaml"),
        ),
        (
            "ubuntu-from-vi",
            include_str!("../../examples/cvi/ubuntu-from-virtualimage.yaml"),
        ),
    ];

    fn parse(yaml: &str) -> ClusterVirtualImage {
        serde_yaml::from_str(yaml).expect("manifest parses as a ClusterVirtualImage")
    }

    #[test]
    fn documented_examples_round_trip_without_losing_or_adding_fields() {
        for (name, yaml) in EXAMPLES {
            let original: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
            let cvi = parse(yaml);
            assert_eq!(cvi.metadata.name.as_deref(), Some(name));
            let round_tripped = serde_json::to_value(&cvi).unwrap();
            assert_eq!(round_tripped, original, "{name} changed in a round trip");
        }
    }

    #[test]
    fn documented_examples_carry_the_source_they_name() {
        let http = parse(EXAMPLES[0].1);
        assert_eq!(http.spec.data_source.type_, DataSourceType::Http);
        assert!(
            http.spec
                .data_source
                .http
                .unwrap()
                .url
                .ends_with("amd64.img")
        );
        let image = parse(EXAMPLES[1].1);
        assert_eq!(image.spec.data_source.type_, DataSourceType::ContainerImage);
        let upload = parse(EXAMPLES[2].1);
        assert_eq!(upload.spec.data_source.type_, DataSourceType::Upload);
        let reference = parse(EXAMPLES[4].1);
        assert_eq!(
            reference.spec.data_source.object_ref.unwrap().kind,
            ObjectRefKind::VirtualImage
        );
    }

    #[test]
    fn documented_examples_pass_the_cel_rules_locally() {
        for (name, yaml) in EXAMPLES {
            if let Err(errors) = parse(yaml).validate_cel() {
                panic!("{name} fails the CEL rules: {errors:?}");
            }
        }
    }

    /// Manifests of the invalid corpus that are well-typed but break a CEL rule, with a word
    /// the failure must contain.
    const CEL_VIOLATIONS: [(&str, &str); 8] = [
        (
            include_str!("../../tests/corpus/cvi/06-http-type-without-http.yaml"),
            "http is required",
        ),
        (
            include_str!("../../tests/corpus/cvi/07-http-with-container-image.yaml"),
            "containerImage must not be set",
        ),
        (
            include_str!("../../tests/corpus/cvi/11-objectref-virtualimage-without-namespace.yaml"),
            "namespace is required",
        ),
        (
            include_str!("../../tests/corpus/cvi/13-upload-with-http-block.yaml"),
            "http must not be set",
        ),
        (
            include_str!("../../tests/corpus/cvi/14-container-image-type-without-block.yaml"),
            "containerImage is required",
        ),
        (
            include_str!("../../tests/corpus/cvi/18-objectref-virtualdisk-without-namespace.yaml"),
            "namespace is required",
        ),
        (
            include_str!("../../tests/corpus/cvi/24-name-longer-than-128.yaml"),
            "128 characters",
        ),
        (
            include_str!("../../tests/corpus/cvi/27-objectref-with-http.yaml"),
            "http must not be set",
        ),
    ];

    #[test]
    fn cel_rules_refuse_each_wrong_source_block_locally() {
        for (yaml, expected) in CEL_VIOLATIONS {
            let cvi = parse(yaml);
            let name = cvi.metadata.name.clone().unwrap_or_default();
            let errors = match cvi.validate_cel() {
                Ok(()) => panic!("{name} passed the CEL rules"),
                Err(errors) => format!("{errors:?}"),
            };
            assert!(errors.contains(expected), "{name}: {errors}");
        }
    }
}
