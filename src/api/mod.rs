//! Resource types: the platform's image API and the generated CRDs. No I/O here.

pub mod catalog;
pub mod crds;
pub mod cvi;
pub mod datasource;
pub mod status;
pub mod vi;

pub use catalog::{ImageCatalog, ImageCatalogSpec, ImageCatalogStatus};
pub use cvi::{ClusterVirtualImage, ClusterVirtualImageSpec};
pub use datasource::{
    Checksum, ContainerImageSource, DataSource, DataSourceType, HttpSource, ImagePullSecret,
    NamespacedDataSource, NamespacedObjectRef, ObjectRef, ObjectRefKind,
};
pub use status::{DownloadSpeed, ImagePhase, ImageSize, ImageStatus, ImageTarget, ImageUploadUrls};
pub use vi::{VirtualImage, VirtualImageSpec, VirtualImageStorage};
