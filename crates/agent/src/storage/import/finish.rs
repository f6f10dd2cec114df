//! The steps after the stream is in: checking what arrived with qemu-img, converting images that
//! needed a scratch file, growing the volume to its claim's capacity, and the final rename that
//! makes the volume appear at its path only when it is complete.

use super::detect::Format;
use super::qemu::{self, Checked};
use super::source::ProgressState;
use super::{human, Files, ImportError, Method, Target, VolumeFormat};

/// A raw stream written into `<path>.partial` (already at capacity).
pub(crate) async fn streamed(target: &Target, files: &Files) -> Result<(), ImportError> {
    if target.format == VolumeFormat::Qcow2 {
        qemu::check(&qemu::own(target.format, &files.partial), "qcow2").await?;
    }
    commit(target, files)
}

/// An image file written as `<path>.partial` (a qcow2 for a qcow2 volume) or `<path>.scratch`;
/// returns its virtual size and how it became the volume.
pub(crate) async fn from_file(
    format: Format,
    target: &Target,
    files: &Files,
    progress: &ProgressState,
) -> Result<(u64, Method), ImportError> {
    let in_place = format == Format::Qcow2 && target.format == VolumeFormat::Qcow2;
    let path = if in_place {
        &files.partial
    } else {
        &files.scratch
    };
    let name = format.name();
    let spec = qemu::untrusted(format, path);
    let info = qemu::info(&spec, name).await?;
    if let Some(backing) = &info.backing_file {
        return Err(ImportError::Unsupported(format!(
            "the {name} image names a backing file ({backing}), so it is not complete on its own; \
             import a flattened image (qemu-img convert makes one)"
        )));
    }
    if let Some(data_file) = &info.data_file {
        return Err(ImportError::Unsupported(format!(
            "the {name} image keeps its data in another file ({data_file})"
        )));
    }
    if info.encrypted {
        return Err(ImportError::Unsupported(format!(
            "the {name} image is encrypted"
        )));
    }
    let own_path = path.to_string_lossy();
    if let Some(other) = info.extents.iter().find(|e| **e != own_path) {
        return Err(ImportError::Unsupported(format!(
            "the VMDK's data is in other files ({other}); import it as one streamOptimized or monolithicSparse VMDK"
        )));
    }
    if info.marked_corrupt {
        return Err(ImportError::Corrupt {
            format: name.into(),
            detail: "the image is marked corrupt in its header".into(),
        });
    }
    if info.virtual_size > target.capacity {
        return Err(ImportError::TooLarge {
            virtual_size: info.virtual_size,
            capacity: target.capacity,
            exact: true,
        });
    }
    let checked = qemu::check(&spec, name).await?;
    let compressed =
        matches!(checked, Checked::Clean { compressed_clusters } if compressed_clusters > 0);
    if in_place && !compressed {
        grow(target, files, info.virtual_size).await?;
        progress.after_download(100.0);
        commit(target, files)?;
        return Ok((info.virtual_size, Method::AsIs));
    }
    if in_place {
        // Compressed clusters stay compressed in a copied qcow2 and slow down every guest read;
        // a conversion writes them out plain.
        tracing::info!(path = %target.path.display(), "the qcow2 image has compressed clusters; converting it");
        std::fs::rename(&files.partial, &files.scratch).map_err(|error| ImportError::Io {
            what: "renaming",
            path: files.partial.clone(),
            error,
        })?;
    }
    let spec = qemu::untrusted(format, &files.scratch);
    qemu::convert(
        &spec,
        name,
        &files.partial,
        target.format,
        &files.dir,
        progress,
    )
    .await?;
    let _ = std::fs::remove_file(&files.scratch);
    if target.format == VolumeFormat::Qcow2 {
        qemu::check(&qemu::own(target.format, &files.partial), "qcow2").await?;
    }
    grow(target, files, info.virtual_size).await?;
    commit(target, files)?;
    Ok((info.virtual_size, Method::Converted))
}

/// Grows `<path>.partial` from `size` to the capacity.
async fn grow(target: &Target, files: &Files, size: u64) -> Result<(), ImportError> {
    if size == target.capacity {
        return Ok(());
    }
    tracing::debug!(
        from = %human(size),
        to = %human(target.capacity),
        "growing the imported volume to its capacity"
    );
    qemu::resize(&files.partial, target.format, target.capacity, &files.dir).await
}

/// Makes `<path>.partial` the volume at `path`, durably, without replacing a file there.
fn commit(target: &Target, files: &Files) -> Result<(), ImportError> {
    let io = |what, error| ImportError::Io {
        what,
        path: target.path.clone(),
        error,
    };
    std::fs::File::open(&files.partial)
        .and_then(|f| f.sync_all())
        .map_err(|e| io("syncing the volume for", e))?;
    // A hard link never replaces a file that appeared at the path meanwhile; file systems
    // without hard links get a rename after a last look.
    match std::fs::hard_link(&files.partial, &target.path) {
        Ok(()) => {
            let _ = std::fs::remove_file(&files.partial);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(io("not replacing the file that appeared at", e));
        }
        Err(_) if !target.path.exists() => std::fs::rename(&files.partial, &target.path)
            .map_err(|e| io("renaming the volume to", e))?,
        Err(e) => return Err(io("linking the volume to", e)),
    }
    if let Ok(dir) = std::fs::File::open(&files.dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}
