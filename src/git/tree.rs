//! The catalog files of a commit, read within budgets: file size from the object header
//! before a blob is loaded, file count, total bytes.

use super::*;

/// The largest catalog read from a commit: files are held in memory while validated.
const MAX_CATALOG_BYTES: usize = 64 << 20;

/// The most files a catalog may have.
const MAX_CATALOG_FILES: usize = 10_000;

/// The `*.yaml` and `*.yml` files under `path` (relative to the repository root; `.` or
/// empty is the root) of `commit`, sorted by path. A missing path gives no files: the
/// caller says what that means. Symlinks and submodules are skipped.
pub fn read_files(
    cache_dir: &Path,
    commit: &str,
    path: &str,
) -> Result<Vec<(String, Vec<u8>)>, GitError> {
    let repo = Repository::open_bare(cache_dir).map_err(|error| {
        GitError::Other(format!(
            "opening the Git cache {}: {}",
            cache_dir.display(),
            error.message()
        ))
    })?;
    let other = |error: git2::Error| {
        GitError::Other(format!("reading commit {commit}: {}", error.message()))
    };
    let commit_object = repo
        .revparse_single(commit)
        .and_then(|object| object.peel_to_commit())
        .map_err(other)?;
    let root = commit_object.tree().map_err(other)?;
    let prefix = normalize_path(path);
    let tree = if prefix.is_empty() {
        root
    } else {
        match root.get_path(Path::new(&prefix)) {
            Ok(entry) => match entry.to_object(&repo).map_err(other)?.into_tree() {
                Ok(tree) => tree,
                // The path names one file: the catalog is that file.
                Err(object) => {
                    if object.kind() != Some(git2::ObjectType::Blob) || !is_catalog_file(&prefix) {
                        return Ok(Vec::new());
                    }
                    let content = Budget::default().read(&repo, object.id(), &prefix, &other)?;
                    return Ok(vec![(prefix.clone(), content)]);
                }
            },
            Err(error) if error.code() == ErrorCode::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(other(error)),
        }
    };
    let mut files = Vec::new();
    let mut budget = Budget::default();
    let mut failure = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |parent, entry| {
        if entry.filemode() != i32::from(git2::FileMode::Blob)
            && entry.filemode() != i32::from(git2::FileMode::BlobExecutable)
        {
            return git2::TreeWalkResult::Ok;
        }
        let Ok(name) = entry.name() else {
            return git2::TreeWalkResult::Ok;
        };
        let relative = if prefix.is_empty() {
            format!("{parent}{name}")
        } else {
            format!("{prefix}/{parent}{name}")
        };
        if !is_catalog_file(&relative) {
            return git2::TreeWalkResult::Ok;
        }
        match budget.read(&repo, entry.id(), &relative, &other) {
            Ok(content) => {
                files.push((relative, content));
                git2::TreeWalkResult::Ok
            }
            Err(error) => {
                failure = Some(error);
                git2::TreeWalkResult::Abort
            }
        }
    })
    .map_err(|error| failure.take().unwrap_or_else(|| other(error)))?;
    if let Some(failure) = failure {
        return Err(failure);
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// What a commit's catalog may hold, checked from each object's header before its blob is
/// loaded, so a hostile commit costs no memory.
#[derive(Default)]
struct Budget {
    pub(super) files: usize,
    bytes: usize,
}

impl Budget {
    /// The content of the blob `id` at `path`, if it fits.
    pub(super) fn read(
        &mut self,
        repo: &Repository,
        id: git2::Oid,
        path: &str,
        failed: &dyn Fn(git2::Error) -> GitError,
    ) -> Result<Vec<u8>, GitError> {
        self.files += 1;
        if self.files > MAX_CATALOG_FILES {
            return Err(GitError::CatalogTooLarge {
                path: path.to_string(),
                message: format!(
                    "the catalog has more than {MAX_CATALOG_FILES} files; split it across catalogs"
                ),
            });
        }
        let (size, _) = repo
            .odb()
            .and_then(|odb| odb.read_header(id))
            .map_err(failed)?;
        if size > MAX_FILE_BYTES {
            return Err(GitError::CatalogTooLarge {
                path: path.to_string(),
                message: format!(
                    "the file has {size} bytes, more than the {} MiB a catalog file may have; split it into several files",
                    MAX_FILE_BYTES >> 20
                ),
            });
        }
        self.bytes += size;
        if self.bytes > MAX_CATALOG_BYTES {
            return Err(GitError::CatalogTooLarge {
                path: path.to_string(),
                message: format!(
                    "with this file the catalog files are larger than {} MiB together; split the catalog",
                    MAX_CATALOG_BYTES >> 20
                ),
            });
        }
        let blob = repo.find_blob(id).map_err(failed)?;
        Ok(blob.content().to_vec())
    }
}

fn is_catalog_file(path: &str) -> bool {
    path.ends_with(".yaml") || path.ends_with(".yml")
}

/// `./images/` → `images`; `.` and `/` → the root.
fn normalize_path(path: &str) -> String {
    path.split('/')
        .filter(|segment| !segment.is_empty() && *segment != ".")
        .collect::<Vec<_>>()
        .join("/")
}
