//! Volume files in a pool, made and changed with qemu-img: blank volumes, copy-on-write clones,
//! full copies, growing, and removal. Every file is written under a `.partial` name and renamed
//! into place only when complete, so a crash never leaves a half-made volume under its real name.
//!
//! A copy-on-write clone must not let the source keep writing into the image the clone reads.
//! So the source's data becomes a read-only base image (`base-*.qcow2`, a hard link to the
//! source file, so no step loses it), the source gets a fresh overlay on that base under its own
//! name (an atomic rename), and the clone is a second overlay on the same base. Bases that no
//! volume needs any more are removed by [`collect_bases`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// A failed volume file operation, with what qemu-img or the file system said.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{what}: {detail}")]
    Failed { what: String, detail: String },
    #[error("no space left in the pool {pool}: {detail}")]
    NoSpace { pool: String, detail: String },
}

fn failed(what: impl Into<String>, detail: impl ToString) -> FileError {
    let detail = detail.to_string();
    FileError::Failed {
        what: what.into(),
        detail,
    }
}

/// The file name a volume's data is written to before it is complete.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

async fn qemu_img(args: &[&str], what: &str, pool: &Path) -> Result<String, FileError> {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .await
        .map_err(|e| failed(what, format!("running qemu-img: {e}")))?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if detail.contains("No space left") {
            return Err(FileError::NoSpace {
                pool: pool.display().to_string(),
                detail,
            });
        }
        return Err(failed(what, detail));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// qemu-img's cache mode for writing a new file at `out` (`-t`): `none` (`O_DIRECT`) where the
/// file system allows it, else `writeback`. Both flush when qemu-img exits. Its default,
/// `unsafe` (page cache, no flush), left the flush to the caller's fsync and was 2-3.5x slower
/// for 2 GiB conversions on the machines measured, `writeback` had page-cache writeback
/// stalls, `none` was the fastest (docs/benchmarks.md, "Image import throughput"). Probed with a
/// file beside `out` that is removed at once (tmpfs before Linux 6.6 and some FUSE file systems
/// refuse `O_DIRECT`).
pub(crate) fn output_cache(out: &Path) -> &'static str {
    use std::os::unix::fs::OpenOptionsExt;
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".direct-probe");
    let probe = out.with_file_name(name);
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    if direct {
        "none"
    } else {
        "writeback"
    }
}

fn pool_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

/// `qemu-img info` of an image (shared lock, so it works while a VM has it open).
pub async fn info(path: &Path) -> Result<serde_json::Value, FileError> {
    let p = path.to_string_lossy();
    let out = qemu_img(
        &["info", "--output=json", "-U", &p],
        "reading the image",
        pool_of(path),
    )
    .await?;
    serde_json::from_str(&out).map_err(|e| failed("reading qemu-img info", e))
}

/// Creates an empty volume of `size` bytes in `format` at `path`.
pub async fn create_blank(path: &Path, format: &str, size: u64) -> Result<(), FileError> {
    let partial = partial_path(path);
    let _ = tokio::fs::remove_file(&partial).await;
    let p = partial.to_string_lossy();
    let size = size.to_string();
    qemu_img(
        &["create", "-q", "-f", format, &p, &size],
        "creating the volume",
        pool_of(path),
    )
    .await?;
    finish(&partial, path).await
}

/// Renames a complete partial file into place.
pub async fn finish(partial: &Path, path: &Path) -> Result<(), FileError> {
    tokio::fs::rename(partial, path)
        .await
        .map_err(|e| failed("putting the volume in place", e))
}

/// What a clone needs to know of an image, read from its header without running qemu-img (a
/// clone is a handful of file operations, and each qemu-img run costs tens of milliseconds).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFacts {
    /// `qcow2` or `raw`.
    pub format: &'static str,
    pub virtual_size: u64,
    /// A qcow2 image's backing file, as an absolute path.
    pub backing: Option<PathBuf>,
}

/// Reads a qcow2 header (version 2 or 3); anything else is raw, sized by its length.
pub async fn image_facts(path: &Path) -> Result<ImageFacts, FileError> {
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path)
        .await
        .map_err(|e| failed(format!("opening {}", path.display()), e))?;
    let mut header = [0u8; 32];
    let n = f.read(&mut header).await.unwrap_or(0);
    if n < 32 || &header[..4] != b"QFI\xfb" {
        let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
        return Ok(ImageFacts {
            format: "raw",
            virtual_size: len,
            backing: None,
        });
    }
    let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
    let offset = be64(&header[8..16]);
    let length = u32::from_be_bytes(header[16..20].try_into().unwrap_or([0; 4])) as usize;
    let virtual_size = be64(&header[24..32]);
    let backing = if offset > 0 && length > 0 && length <= 1023 {
        use tokio::io::AsyncSeekExt;
        let mut name = vec![0u8; length];
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| failed("reading the backing file name", e))?;
        f.read_exact(&mut name)
            .await
            .map_err(|e| failed("reading the backing file name", e))?;
        let name = PathBuf::from(String::from_utf8_lossy(&name).into_owned());
        Some(if name.is_absolute() {
            name
        } else {
            pool_of(path).join(name)
        })
    } else {
        None
    };
    Ok(ImageFacts {
        format: "qcow2",
        virtual_size,
        backing,
    })
}

/// The base image `source` is a still-empty overlay of, if so: a source cloned again without
/// writes in between shares that base instead of growing its backing chain by one each time
/// (a golden image cloned a hundred times stays one base and its overlays).
async fn unchanged_base(source: &Path, facts: &ImageFacts) -> Option<PathBuf> {
    let backing = facts.backing.clone()?;
    let is_base = backing.parent() == source.parent()
        && backing
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("base-"));
    if !is_base {
        return None;
    }
    let p = source.to_string_lossy();
    let map = qemu_img(
        &["map", "-U", "--output=json", &p],
        "reading the source's allocation",
        pool_of(source),
    )
    .await
    .ok()?;
    let extents: serde_json::Value = serde_json::from_str(&map).ok()?;
    let written = extents
        .as_array()?
        .iter()
        .any(|e| e["depth"] == 0 && e["data"] == true);
    (!written).then_some(backing)
}

/// Makes `target` (at least `size` bytes) a copy-on-write clone of `source`, in the same pool.
pub async fn linked_clone(source: &Path, target: &Path, size: u64) -> Result<(), FileError> {
    let pool = pool_of(source);
    let facts = image_facts(source).await?;
    let source_size = facts.virtual_size;
    if let Some(base) = unchanged_base(source, &facts).await {
        let base_format = image_facts(&base).await?.format;
        return overlay_on(&base, base_format, target, size.max(source_size)).await;
    }
    let source_format = facts.format;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let base = pool.join(format!("base-{stamp:x}.{source_format}"));
    tokio::fs::hard_link(source, &base)
        .await
        .map_err(|e| failed("keeping the source image as a base", e))?;
    let mut read_only = tokio::fs::metadata(&base)
        .await
        .map_err(|e| failed("reading the base", e))?
        .permissions();
    read_only.set_readonly(true);
    let _ = tokio::fs::set_permissions(&base, read_only).await;
    for (path, size) in [(source, source_size), (target, size.max(source_size))] {
        overlay_on(&base, source_format, path, size).await?;
    }
    Ok(())
}

/// Puts a new qcow2 overlay of `size` bytes on `base` at `path` (atomically replacing `path`).
async fn overlay_on(
    base: &Path,
    base_format: &str,
    path: &Path,
    size: u64,
) -> Result<(), FileError> {
    let partial = partial_path(path);
    let _ = tokio::fs::remove_file(&partial).await;
    let (p, b) = (partial.to_string_lossy(), base.to_string_lossy());
    let size = size.to_string();
    qemu_img(
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            base_format,
            "-b",
            &b,
            &p,
            &size,
        ],
        "creating a copy-on-write overlay",
        pool_of(path),
    )
    .await?;
    finish(&partial, path).await
}

/// Copies `source` into a new volume at `target` in `format`, grown to at least `size` bytes.
pub async fn full_copy(
    source: &Path,
    target: &Path,
    format: &str,
    size: u64,
) -> Result<(), FileError> {
    let partial = partial_path(target);
    let _ = tokio::fs::remove_file(&partial).await;
    let (s, p) = (source.to_string_lossy(), partial.to_string_lossy());
    let cache = output_cache(&partial);
    qemu_img(
        &["convert", "-U", "-t", cache, "-O", format, &s, &p],
        "copying the source volume",
        pool_of(target),
    )
    .await?;
    grow_file(&partial, size).await?;
    finish(&partial, target).await
}

/// Grows an image that no VM has open to `size` bytes (never shrinks).
pub async fn grow_file(path: &Path, size: u64) -> Result<(), FileError> {
    let current = info(path).await?["virtual-size"].as_u64().unwrap_or(0);
    if current >= size {
        return Ok(());
    }
    let p = path.to_string_lossy();
    let size = size.to_string();
    qemu_img(&["resize", &p, &size], "growing the volume", pool_of(path)).await?;
    Ok(())
}

/// Removes a volume file and what is left of an unfinished one, then bases nothing needs.
pub async fn remove(path: &Path) -> Result<(), FileError> {
    for p in [path.to_path_buf(), partial_path(path)] {
        match tokio::fs::remove_file(&p).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(format!("removing {}", p.display()), e)),
        }
    }
    collect_bases(pool_of(path)).await;
    Ok(())
}

/// Removes base images in `pool` that no other image there (directly or through other bases)
/// is backed by.
pub async fn collect_bases(pool: &Path) {
    let Ok(mut entries) = tokio::fs::read_dir(pool).await else {
        return;
    };
    let mut bases = Vec::new();
    let mut images = Vec::new();
    while let Ok(Some(e)) = entries.next_entry().await {
        let path = e.path();
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".partial") || !e.file_type().await.is_ok_and(|t| t.is_file()) {
            continue;
        }
        if name.starts_with("base-") {
            bases.push(path);
        } else {
            images.push(path);
        }
    }
    if bases.is_empty() {
        return;
    }
    let mut needed: HashSet<PathBuf> = HashSet::new();
    let mut frontier = images;
    while let Some(image) = frontier.pop() {
        let Ok(i) = info(&image).await else { continue };
        let backing = i["full-backing-filename"]
            .as_str()
            .or(i["backing-filename"].as_str());
        if let Some(b) = backing {
            let b = PathBuf::from(b);
            if needed.insert(b.clone()) {
                frontier.push(b);
            }
        }
    }
    for base in bases {
        if !needed.contains(&base) {
            tracing::info!(base = %base.display(), "removing a base image no volume uses");
            let _ = tokio::fs::remove_file(&base).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_cache_is_direct_where_the_file_system_allows_and_leaves_nothing() {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("vol.qcow2.partial");
        let direct_here = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_DIRECT)
            .open(dir.path().join("check"))
            .is_ok();
        let _ = std::fs::remove_file(dir.path().join("check"));
        let expected = if direct_here { "none" } else { "writeback" };
        assert_eq!(output_cache(&out), expected);
        eprintln!("O_DIRECT in {}: {direct_here}", dir.path().display());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        // Where no file can be made, qemu-img is left to report why; writeback asks nothing of
        // the file system.
        assert_eq!(output_cache(&dir.path().join("missing/vol")), "writeback");
    }

    async fn write_pattern(path: &Path, offset: u64, text: &str) {
        let cmd = format!("write -P 0x{:02x} {offset} 64k", text.as_bytes()[0]);
        let p = path.to_string_lossy();
        qemu_io(&p, &cmd).await;
    }

    async fn qemu_io(path: &str, cmd: &str) -> String {
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", cmd, path])
            .output()
            .await
            .expect("qemu-io");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    async fn reads(path: &Path, offset: u64, byte: u8) -> bool {
        let cmd = format!("read -P 0x{byte:02x} {offset} 64k");
        let p = path.to_string_lossy();
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", &cmd, &p])
            .output()
            .await
            .expect("qemu-io");
        let text = String::from_utf8_lossy(&out.stdout);
        out.status.success() && !text.contains("Pattern verification failed")
    }

    #[tokio::test]
    async fn a_linked_clone_and_its_source_diverge_and_bases_go_with_the_last_user() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("pvc-a.qcow2");
        let clone = dir.path().join("pvc-b.qcow2");
        create_blank(&source, "qcow2", 1 << 20)
            .await
            .expect("blank");
        write_pattern(&source, 0, "A").await;
        linked_clone(&source, &clone, 2 << 20).await.expect("clone");
        assert!(
            reads(&clone, 0, b'A').await,
            "the clone sees the source's data"
        );
        assert_eq!(
            info(&clone).await.unwrap()["virtual-size"].as_u64(),
            Some(2 << 20)
        );
        // The header reader agrees with qemu-img.
        let facts = image_facts(&clone).await.unwrap();
        let qemu = info(&clone).await.unwrap();
        assert_eq!(facts.format, "qcow2");
        assert_eq!(facts.virtual_size, 2 << 20);
        assert_eq!(
            facts
                .backing
                .as_deref()
                .map(|p| p.to_string_lossy().to_string()),
            qemu["full-backing-filename"].as_str().map(str::to_string)
        );
        write_pattern(&source, 0, "B").await;
        write_pattern(&clone, 65536, "C").await;
        assert!(
            reads(&clone, 0, b'A').await,
            "source writes stay out of the clone"
        );
        assert!(reads(&source, 0, b'B').await);
        assert!(
            reads(&source, 65536, 0).await,
            "clone writes stay out of the source"
        );
        let bases = |d: &Path| {
            std::fs::read_dir(d)
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("base-")
                })
                .count()
        };
        assert_eq!(bases(dir.path()), 1);
        // Cloned again without writes in between: the same base, no deeper chain.
        let untouched = dir.path().join("pvc-c.qcow2");
        let second = dir.path().join("pvc-d.qcow2");
        linked_clone(&clone, &untouched, 2 << 20)
            .await
            .expect("clone of the clone");
        assert_eq!(
            bases(dir.path()),
            2,
            "the written clone got a base of its own"
        );
        linked_clone(&untouched, &second, 2 << 20)
            .await
            .expect("clone again");
        assert_eq!(bases(dir.path()), 2, "an unchanged source shares its base");
        assert!(reads(&second, 65536, b'C').await);
        remove(&untouched).await.expect("remove");
        remove(&second).await.expect("remove");
        remove(&source).await.expect("remove source");
        assert_eq!(
            bases(dir.path()),
            2,
            "the clone still needs its chain of bases"
        );
        assert!(reads(&clone, 0, b'A').await);
        remove(&clone).await.expect("remove clone");
        assert_eq!(bases(dir.path()), 0);
    }

    #[tokio::test]
    async fn copies_grow_and_nothing_partial_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("src.qcow2");
        create_blank(&source, "qcow2", 1 << 20)
            .await
            .expect("blank");
        write_pattern(&source, 0, "Z").await;
        let copy = dir.path().join("copy.raw");
        full_copy(&source, &copy, "raw", 3 << 20)
            .await
            .expect("copy");
        assert_eq!(std::fs::metadata(&copy).unwrap().len(), 3 << 20);
        assert!(!partial_path(&copy).exists());
        let missing = full_copy(&dir.path().join("nope"), &copy, "raw", 1).await;
        assert!(missing
            .unwrap_err()
            .to_string()
            .contains("copying the source volume"));
    }
}
