//! `image-catalog inspect FILE…`: the import's own inspection of local disk image files, for
//! an operator deciding whether a file is fit for the catalog before committing it.
//!
//! It runs the same [`Inspector`] an import runs on the received bytes (format, compression,
//! virtual size, and every refusal: backing files, encryption, truncation, decompression
//! bombs), and prints the sha256 to put in the catalog entry's checksums.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::import::digest::Sha256Hasher;
use crate::import::inspect::{
    Compression, ImageInfo, InspectError, InspectLimits, Inspector, human_size,
};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Disk image files: qcow2, vmdk, vdi, vhd, vhdx, raw or ISO, plain, gzip or xz.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Refuse images that unpack to more than this many bytes, as the daemon's flag of the
    /// same name does.
    #[arg(long, default_value_t = 1 << 40)]
    pub max_unpacked_size: u64,
}

/// What one file is, as an import would see it.
#[derive(Debug)]
pub struct Inspected {
    pub verdict: Result<ImageInfo, InspectError>,
    /// Of the file as it is (compressed, if it is): what a catalog entry's checksum names.
    pub sha256: String,
}

/// Prints one line per file; returns whether every file would import.
pub fn run(args: &InspectArgs) -> anyhow::Result<bool> {
    let mut all_fit = true;
    for path in &args.files {
        let inspected = inspect_file(
            path,
            InspectLimits {
                max_unpacked_size: args.max_unpacked_size,
                ..InspectLimits::default()
            },
        )?;
        all_fit &= inspected.verdict.is_ok();
        println!("{}: {}", path.display(), describe(&inspected));
    }
    Ok(all_fit)
}

/// Reads the whole file through the inspection and sha256, in the import's chunk size.
pub fn inspect_file(path: &Path, limits: InspectLimits) -> anyhow::Result<Inspected> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut inspector = Inspector::new(limits);
    let mut sha256 = Sha256Hasher::default();
    let mut buf = vec![0; 1 << 20];
    let mut refused = None;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        sha256.update(&buf[..n]);
        if refused.is_none()
            && let Err(err) = inspector.update(&buf[..n])
        {
            refused = Some(err);
        }
    }
    Ok(Inspected {
        verdict: match refused {
            Some(err) => Err(err),
            None => inspector.finish(),
        },
        sha256: sha256.finish(),
    })
}

/// `qcow2 (xz), virtual size 1 GiB, sha256 …` or `CorruptImage: <what to do>`.
pub fn describe(inspected: &Inspected) -> String {
    match &inspected.verdict {
        Ok(info) => format!(
            "{}{}{}, virtual size {}, sha256 {}",
            info.format,
            match info.compression {
                Some(Compression::Gzip) => " (gzip)",
                Some(Compression::Xz) => " (xz)",
                None => "",
            },
            if info.cdrom { ", CD-ROM" } else { "" },
            human_size(info.virtual_size),
            inspected.sha256
        ),
        Err(err) => format!("{}: {err}", err.reason()),
    }
}
