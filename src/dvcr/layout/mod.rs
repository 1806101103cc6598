//! The DVCR image layout, byte for byte: the tar framing of the single disk layer, the image
//! config and the manifest. Pure code, no I/O.
//!
//! The layout is an interoperability contract with the virtualization stack that reads these
//! images: one uncompressed tar layer holding `disk/` and `disk/<file>`, config labels
//! describing the file, OCI media types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Media type of the image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of the image config.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// Media type of the disk layer: an uncompressed tar.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";

/// Config label: bytes of the stored file, decimal.
pub const LABEL_SIZE: &str = "source-image-size";
/// Config label: virtual size of the disk in bytes, decimal.
pub const LABEL_VIRTUAL_SIZE: &str = "source-image-virtual-size";
/// Config label: disk format, e.g. `qcow2`.
pub const LABEL_FORMAT: &str = "source-image-format";
/// Config label: hex sha256 of the stored file.
pub const LABEL_SHA256: &str = "source-image-sha256";
/// Config label: hex md5 of the stored file.
pub const LABEL_MD5: &str = "source-image-md5";

/// The directory that holds the disk file inside the layer.
pub const DISK_DIR: &str = "disk";
/// Name used when the source gives no usable file name.
pub const FALLBACK_FILE_NAME: &str = "disk.img";
/// Longest file name kept: the ustar name field is 100 bytes.
pub const MAX_FILE_NAME_BYTES: usize = 100;

/// Tar block size.
pub const BLOCK: u64 = 512;
/// The two headers at the start of the layer: `disk/` then `disk/<file>`.
pub const HEADERS_LEN: u64 = 2 * BLOCK;
/// The end-of-archive marker: two zero blocks.
pub const END_LEN: u64 = 2 * BLOCK;

/// Repository of a ClusterVirtualImage.
pub fn cvi_repository(name: &str) -> String {
    format!("cvi/{name}")
}

/// Repository of a VirtualImage.
pub fn vi_repository(namespace: &str, name: &str) -> String {
    format!("vi/{namespace}/{name}")
}

/// The file name stored in the layer, derived from a URL path (or a URL, or a bare name):
/// only the last path segment, percent-decoded, without control characters, at most
/// [`MAX_FILE_NAME_BYTES`] bytes; [`FALLBACK_FILE_NAME`] when nothing usable remains.
pub fn disk_file_name(url_path_or_name: &str) -> String {
    // A query or fragment is never part of the name (`.../disk.qcow2?token=...`).
    let path = url_path_or_name
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    let segment = path.rsplit(['/', '\\']).next().unwrap_or_default();
    let decoded = crate::net::percent_decode(segment);
    let cleaned: String = decoded
        .chars()
        // A decoded `%2F` must not reintroduce a path separator.
        .map(|c| {
            if c.is_control() || c == '/' || c == '\\' {
                '_'
            } else {
                c
            }
        })
        .collect();
    let cleaned = cleaned.trim();
    let mut end = cleaned.len().min(MAX_FILE_NAME_BYTES);
    while !cleaned.is_char_boundary(end) {
        end -= 1;
    }
    let name = cleaned[..end].trim_end();
    if name.is_empty() || name == "." || name == ".." {
        FALLBACK_FILE_NAME.to_string()
    } else {
        name.to_string()
    }
}

/// Zero padding after a file of `file_size` bytes, up to the next tar block.
pub fn padding_len(file_size: u64) -> u64 {
    (BLOCK - file_size % BLOCK) % BLOCK
}

/// Size of the whole layer for a file of `file_size` bytes.
pub fn layer_size(file_size: u64) -> u64 {
    HEADERS_LEN + file_size + padding_len(file_size) + END_LEN
}

/// The bytes that follow the file: padding to the block, then the end-of-archive marker.
pub fn trailer(file_size: u64) -> Vec<u8> {
    vec![0; (padding_len(file_size) + END_LEN) as usize]
}

/// The two ustar headers that open the layer: `disk/` (0755) and `disk/<file_name>` (0644),
/// owner 0:0, mtime 0, so the same file always gives the same layer digest.
///
/// `file_name` must come from [`disk_file_name`]. Sizes of 8 GiB and more use the base-256
/// size encoding (GNU extension, read by Go's archive/tar, GNU tar and the `tar` crate).
pub fn disk_headers(file_name: &str, file_size: u64) -> [u8; HEADERS_LEN as usize] {
    let mut out = [0u8; HEADERS_LEN as usize];
    let dir = header(
        format!("{DISK_DIR}/").as_bytes(),
        &[],
        tar::EntryType::Directory,
        0o755,
        0,
    );
    let (prefix, name) = file_path_fields(file_name);
    let file = header(&name, &prefix, tar::EntryType::Regular, 0o644, file_size);
    out[..BLOCK as usize].copy_from_slice(dir.as_bytes());
    out[BLOCK as usize..].copy_from_slice(file.as_bytes());
    out
}

/// The ustar `name` and `prefix` fields for `disk/<file_name>`: the name field alone when it
/// fits in 100 bytes, else `disk` goes to the prefix (the name is at most 100 bytes).
fn file_path_fields(file_name: &str) -> (Vec<u8>, Vec<u8>) {
    let full = format!("{DISK_DIR}/{file_name}");
    if full.len() <= 100 {
        (Vec::new(), full.into_bytes())
    } else {
        (DISK_DIR.as_bytes().to_vec(), file_name.as_bytes().to_vec())
    }
}

/// Reads back what [`disk_headers`] wrote: `(file name, file size)`, or what is wrong.
pub fn parse_disk_headers(headers: &[u8]) -> Result<(String, u64), String> {
    if headers.len() < HEADERS_LEN as usize {
        return Err(format!("layer is shorter than {HEADERS_LEN} bytes"));
    }
    let block = |i: usize| {
        let mut bytes = [0u8; BLOCK as usize];
        bytes.copy_from_slice(&headers[i * BLOCK as usize..(i + 1) * BLOCK as usize]);
        tar::Header::from_byte_slice(&bytes).clone()
    };
    let check = |header: &tar::Header| -> Result<(), String> {
        let stored = header
            .cksum()
            .map_err(|e| format!("bad tar checksum field: {e}"))?;
        let mut copy = header.clone();
        copy.set_cksum();
        match copy.cksum() {
            Ok(computed) if computed == stored => Ok(()),
            _ => Err("tar header checksum mismatch".to_string()),
        }
    };

    let dir = block(0);
    check(&dir)?;
    let dir_path = dir.path_bytes();
    if dir.entry_type() != tar::EntryType::Directory
        || !(&*dir_path == b"disk/" || &*dir_path == b"disk")
    {
        return Err(format!(
            "first tar entry is {:?}, not the directory disk/",
            String::from_utf8_lossy(&dir_path)
        ));
    }

    let file = block(1);
    check(&file)?;
    let path = String::from_utf8_lossy(&file.path_bytes()).into_owned();
    let name = path
        .strip_prefix("disk/")
        .filter(|name| !name.is_empty() && !name.contains('/'))
        .ok_or_else(|| format!("second tar entry is {path:?}, not disk/<file>"))?;
    if file.entry_type() != tar::EntryType::Regular {
        return Err(format!("{path} is not a regular file"));
    }
    let size = file
        .size()
        .map_err(|e| format!("bad size of {path}: {e}"))?;
    Ok((name.to_string(), size))
}

fn header(name: &[u8], prefix: &[u8], kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    // Written directly rather than with `set_path`, which drops the trailing `/` of `disk/`.
    if let Some(ustar) = header.as_ustar_mut() {
        let name_len = name.len().min(ustar.name.len());
        ustar.name[..name_len].copy_from_slice(&name[..name_len]);
        let prefix_len = prefix.len().min(ustar.prefix.len());
        ustar.prefix[..prefix_len].copy_from_slice(&prefix[..prefix_len]);
    }
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header.set_cksum();
    header
}

/// What the config records about the stored disk file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLabels {
    /// Bytes of the stored file (as downloaded, still compressed if the source was).
    pub stored_size: u64,
    /// Virtual size of the disk in bytes.
    pub virtual_size: u64,
    /// Disk format, e.g. `qcow2`, `raw`, `iso`.
    pub format: String,
    /// Hex sha256 of the stored file.
    pub sha256: Option<String>,
    /// Hex md5 of the stored file.
    pub md5: Option<String>,
}

impl ImageLabels {
    /// The config labels, by name.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_SIZE.to_string(), self.stored_size.to_string());
        labels.insert(
            LABEL_VIRTUAL_SIZE.to_string(),
            self.virtual_size.to_string(),
        );
        labels.insert(LABEL_FORMAT.to_string(), self.format.clone());
        if let Some(sha256) = &self.sha256 {
            labels.insert(LABEL_SHA256.to_string(), sha256.clone());
        }
        if let Some(md5) = &self.md5 {
            labels.insert(LABEL_MD5.to_string(), md5.clone());
        }
        labels
    }

    /// Reads the labels back; `Err` names the first required label missing or malformed.
    pub fn from_map(labels: &BTreeMap<String, String>) -> Result<Self, String> {
        let number = |name: &str| -> Result<u64, String> {
            let value = labels
                .get(name)
                .ok_or_else(|| format!("label {name} is missing"))?;
            value
                .parse()
                .map_err(|_| format!("label {name} is not a byte count: {value:?}"))
        };
        Ok(Self {
            stored_size: number(LABEL_SIZE)?,
            virtual_size: number(LABEL_VIRTUAL_SIZE)?,
            format: labels
                .get(LABEL_FORMAT)
                .cloned()
                .ok_or_else(|| format!("label {LABEL_FORMAT} is missing"))?,
            sha256: labels.get(LABEL_SHA256).cloned(),
            md5: labels.get(LABEL_MD5).cloned(),
        })
    }
}

/// The image config (the subset of the OCI image config that DVCR images use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: ContainerConfig,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

/// The config JSON for a layer (uncompressed, so its diff_id is its digest) and labels.
pub fn config_json(layer_digest: &str, labels: &ImageLabels) -> Vec<u8> {
    let config = ImageConfig {
        architecture: "amd64".to_string(),
        os: "linux".to_string(),
        config: ContainerConfig {
            labels: Some(labels.to_map()),
        },
        rootfs: RootFs {
            kind: "layers".to_string(),
            diff_ids: vec![layer_digest.to_string()],
        },
    };
    // Plain structs and string maps always serialise.
    serde_json::to_vec(&config).unwrap_or_default()
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// The image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The manifest JSON for a config blob and the single disk layer.
pub fn manifest_json(
    config_digest: &str,
    config_size: u64,
    layer_digest: &str,
    layer_size: u64,
) -> Vec<u8> {
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(MANIFEST_MEDIA_TYPE.to_string()),
        config: Descriptor {
            media_type: CONFIG_MEDIA_TYPE.to_string(),
            digest: config_digest.to_string(),
            size: config_size,
        },
        layers: vec![Descriptor {
            media_type: LAYER_MEDIA_TYPE.to_string(),
            digest: layer_digest.to_string(),
            size: layer_size,
        }],
    };
    serde_json::to_vec(&manifest).unwrap_or_default()
}

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Whether `digest` is `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `repository` is a valid OCI repository name (lowercase components separated by
/// `/`, each `[a-z0-9]+` joined by `.`, `_`, `__` or dashes).
pub fn is_valid_repository(repository: &str) -> bool {
    !repository.is_empty()
        && repository.len() <= 255
        && repository.split('/').all(is_valid_path_component)
}

fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or any number of `-`, always followed by alnum.
        let run_start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let run = &component[run_start..i];
        let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Whether `tag` is a valid OCI tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn is_valid_tag(tag: &str) -> bool {
    let bytes = tag.as_bytes();
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    !bytes.is_empty()
        && bytes.len() <= 128
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests;
