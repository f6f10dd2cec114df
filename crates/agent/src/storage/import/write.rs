//! Writing the image stream into a file while it arrives: the raw data straight into the volume
//! (as clusters of a qcow2 image written here, see [`qcow2`], or into a raw file), other formats
//! into the file qemu-img will read. Blocks that are all zeroes are skipped, so every file stays
//! sparse; the target is always a fresh file, which reads as zeroes there.
//! Volume files are written with `O_DIRECT` where the file system allows and made durable (see
//! [`Sink::volume`]); a scratch file goes through the page cache, where qemu-img reads it back
//! from, and is never synced (see [`Sink::scratch`]).

use super::detect::{self, Format, HEAD_LEN};
use super::qcow2;
use super::source::{ProgressState, Source};
use super::{Files, ImportError, Target, VolumeFormat};
use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::process::ChildStdout;
use tokio::task::JoinHandle;

/// Bytes written per request (a multiple of every granularity below).
const CHUNK: usize = 2 << 20;
/// `O_DIRECT` chunk writes at once while the next is read: the disk works on several at a time
/// (a qcow2 volume's clusters are allocated as each write runs, so they may land in any order).
/// Page-cache writes run one at a time: they only copy, and the file's lock serializes them
/// anyway (several spun on it).
const DIRECT_WRITES_IN_FLIGHT: usize = 4;
/// Held back at the end of a raw stream until its end is known: a fixed VHD's footer.
const TAIL: usize = 512;
/// Zero detection granularity for plain files (the file system's block), and the alignment of
/// `O_DIRECT` writes.
const FILE_GRANULE: usize = 4 << 10;

/// A chunk's buffer, its data starting on a [`FILE_GRANULE`] boundary as `O_DIRECT` writes
/// need (the allocation is a little larger; no unsafe code needed).
struct Chunk {
    mem: Vec<u8>,
    start: usize,
}

impl Chunk {
    fn new() -> Self {
        let mem = vec![0u8; CHUNK + TAIL + FILE_GRANULE];
        let start = mem.as_ptr().align_offset(FILE_GRANULE);
        Self { mem, start }
    }
}

impl std::ops::Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.mem[self.start..self.start + CHUNK + TAIL]
    }
}

impl std::ops::DerefMut for Chunk {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.start + CHUNK + TAIL]
    }
}

/// The image stream: the source itself, or a decompressor's output.
pub(crate) enum Reader<'s, 'a> {
    Plain(&'s mut Source<'a>),
    Decompressed {
        stdout: &'s mut ChildStdout,
        program: &'static str,
    },
}

impl Reader<'_, '_> {
    async fn read(&mut self, out: &mut [u8]) -> Result<usize, ImportError> {
        match self {
            Reader::Plain(source) => source.read(out).await,
            Reader::Decompressed { stdout, program } => {
                stdout.read(out).await.map_err(|e| ImportError::Tool {
                    tool: program,
                    detail: format!("reading its output: {e}"),
                })
            }
        }
    }
}

/// What the stream became.
#[derive(Debug)]
pub(crate) enum Written {
    /// Raw data in `<path>.partial`, already `capacity` bytes long.
    Raw { data_len: u64, vhd_fixed: bool },
    /// An image file: `<path>.partial` for a qcow2 into a qcow2 volume, else `<path>.scratch`.
    File { format: Format },
}

/// Reads the whole image stream into the file its format calls for. `raw_len` is the stream's
/// length when it is the source's own (not decompressed).
pub(crate) async fn consume(
    reader: &mut Reader<'_, '_>,
    target: &Target,
    files: &Files,
    progress: &ProgressState,
    raw_len: Option<u64>,
) -> Result<Written, ImportError> {
    let mut head = vec![0u8; HEAD_LEN];
    let mut filled = 0;
    while filled < HEAD_LEN {
        let n = reader.read(&mut head[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    head.truncate(filled);
    if head.is_empty() {
        return Err(ImportError::Unsupported(
            "the image is empty (0 bytes)".into(),
        ));
    }
    let format = detect::format(&head).map_err(ImportError::Unsupported)?;
    let capacity = target.capacity;
    let too_large = |virtual_size, exact| ImportError::TooLarge {
        virtual_size,
        capacity,
        exact,
    };
    if let Some(size) = detect::header_virtual_size(format, &head) {
        if size > capacity {
            return Err(too_large(size, true));
        }
    }
    match format {
        Format::Raw => {
            // The last 512 bytes may be a fixed VHD's footer, which is not part of the disk.
            if let Some(len) = raw_len.filter(|l| *l > capacity + TAIL as u64) {
                return Err(too_large(len, true));
            }
            progress.set_download_share(1.0);
            let mut sink = match target.format {
                VolumeFormat::Raw => Sink::volume(&files.partial, &files.dir, Some(capacity))?,
                VolumeFormat::Qcow2 => Sink::qcow2(&files.partial, &files.dir, capacity)?,
            };
            let copied = copy(reader, head, &mut sink, Some(capacity), true).await?;
            sink.finish(None).await?;
            Ok(Written::Raw {
                data_len: copied.data_len,
                vhd_fixed: copied.data_len != copied.len,
            })
        }
        Format::Qcow2 if target.format == VolumeFormat::Qcow2 => {
            progress.set_download_share(0.95);
            let mut sink = Sink::volume(&files.partial, &files.dir, None)?;
            let copied = copy(reader, head, &mut sink, None, false).await?;
            sink.finish(Some(copied.len)).await?;
            Ok(Written::File { format })
        }
        _ => {
            progress.set_download_share(0.9);
            let mut sink = Sink::scratch(&files.scratch, &files.dir)?;
            let copied = copy(reader, head, &mut sink, None, false).await?;
            sink.finish(Some(copied.len)).await?;
            Ok(Written::File { format })
        }
    }
}

struct Copied {
    /// Bytes in the stream.
    len: u64,
    /// Bytes of disk data (the stream without a fixed VHD's footer).
    data_len: u64,
}

/// Copies the stream (starting with `head`) into `sink`, at most `limit` bytes of data.
async fn copy(
    reader: &mut Reader<'_, '_>,
    head: Vec<u8>,
    sink: &mut Sink,
    limit: Option<u64>,
    vhd_footer: bool,
) -> Result<Copied, ImportError> {
    let mut buf = Chunk::new();
    buf[..head.len()].copy_from_slice(&head);
    let mut filled = head.len();
    let mut offset = 0u64;
    let mut spare: Option<Chunk> = None;
    loop {
        let mut eof = false;
        while filled < buf.len() {
            let n = reader.read(&mut buf[filled..]).await?;
            if n == 0 {
                eof = true;
                break;
            }
            filled += n;
        }
        if eof {
            break;
        }
        if let Some(limit) = limit.filter(|l| offset + CHUNK as u64 > *l) {
            return Err(ImportError::TooLarge {
                virtual_size: offset + CHUNK as u64,
                capacity: limit,
                exact: false,
            });
        }
        let mut next = spare.take().unwrap_or_else(Chunk::new);
        next[..TAIL].copy_from_slice(&buf[CHUNK..]);
        let full = std::mem::replace(&mut buf, next);
        spare = Some(sink.write(offset, full, CHUNK).await?);
        offset += CHUNK as u64;
        filled = TAIL;
    }
    let len = offset + filled as u64;
    let data_len = if vhd_footer
        && filled >= TAIL
        && detect::is_fixed_vhd_footer(&buf[filled - TAIL..filled], len - TAIL as u64)
    {
        len - TAIL as u64
    } else {
        len
    };
    if let Some(limit) = limit.filter(|l| data_len > *l) {
        return Err(ImportError::TooLarge {
            virtual_size: data_len,
            capacity: limit,
            exact: true,
        });
    }
    let last = (data_len - offset) as usize;
    if last > 0 {
        sink.write(offset, buf, last).await?;
    }
    Ok(Copied { len, data_len })
}

/// Where the bytes go: a file written by blocking tasks, chunks in flight while the next is
/// read. For a qcow2 volume written as the raw disk streams in, `clusters` maps each chunk's
/// data to the clusters appended to the file.
struct Sink {
    file: Arc<Handles>,
    path: PathBuf,
    dir: PathBuf,
    /// Writes under way, oldest first; at most [`Sink::writes_in_flight`].
    in_flight: VecDeque<JoinHandle<(Chunk, std::io::Result<()>)>>,
    clusters: Option<Arc<Mutex<qcow2::Layout>>>,
    /// Synced by [`Sink::finish`]: a volume is; a scratch file, gone after the conversion, is not.
    durable: bool,
}

fn write_error(path: &Path, dir: &Path, e: std::io::Error) -> ImportError {
    if e.raw_os_error() == Some(28) {
        ImportError::NoSpace {
            dir: dir.to_path_buf(),
            detail: format!("writing {}: {e}", path.display()),
        }
    } else {
        ImportError::Io {
            what: "writing",
            path: path.to_path_buf(),
            error: e,
        }
    }
}

/// A file open for plain writes, and for `O_DIRECT` ones where wanted and possible.
struct Handles {
    buffered: std::fs::File,
    direct: Option<std::fs::File>,
}

impl Handles {
    /// Writes `data` at `offset`: whole blocks with `O_DIRECT`, a last partial block buffered.
    fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let Some(direct) = &self.direct else {
            return self.buffered.write_all_at(data, offset);
        };
        let whole = data.len() / FILE_GRANULE * FILE_GRANULE;
        match direct.write_all_at(&data[..whole], offset) {
            // A device whose blocks are larger than 4 KiB refuses the alignment.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                return self.buffered.write_all_at(data, offset);
            }
            other => other?,
        }
        self.buffered
            .write_all_at(&data[whole..], offset + whole as u64)
    }
}

impl Sink {
    /// A new volume file at `path`, `len` bytes long if given. Its writes bypass the page cache
    /// where the file system allows: a volume is not read back by the host, and page-cache
    /// writes cost several times the CPU of direct ones on the machines measured.
    fn volume(path: &Path, dir: &Path, len: Option<u64>) -> Result<Self, ImportError> {
        Self::file(path, dir, len, true)
    }

    /// A new scratch file at `path` for qemu-img to convert: written through the page cache,
    /// where qemu-img reads it from right after, and not synced, since it is removed once
    /// converted and an import never resumes from it (a 1 GiB scratch file's fsync took longer
    /// than its download on the machines measured).
    fn scratch(path: &Path, dir: &Path) -> Result<Self, ImportError> {
        Self::file(path, dir, None, false)
    }

    /// A new file: a `volume` (direct writes where possible, synced by [`Sink::finish`]) or a
    /// scratch file (page-cache writes, not synced).
    fn file(path: &Path, dir: &Path, len: Option<u64>, volume: bool) -> Result<Self, ImportError> {
        let buffered = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|error| ImportError::Io {
                what: "creating",
                path: path.to_path_buf(),
                error,
            })?;
        if let Some(len) = len {
            buffered
                .set_len(len)
                .map_err(|e| write_error(path, dir, e))?;
        }
        let direct = volume
            .then(|| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok()
            })
            .flatten();
        Ok(Sink {
            file: Arc::new(Handles { buffered, direct }),
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
            in_flight: VecDeque::new(),
            clusters: None,
            durable: volume,
        })
    }

    /// A new qcow2 volume of `capacity` bytes at `path`, written with `O_DIRECT`.
    fn qcow2(path: &Path, dir: &Path, capacity: u64) -> Result<Self, ImportError> {
        let mut sink = Self::volume(path, dir, None)?;
        sink.clusters = Some(Arc::new(Mutex::new(qcow2::Layout::new(capacity))));
        Ok(sink)
    }

    /// Waits for the oldest write in flight; returns its buffer.
    async fn settle(&mut self) -> Result<Option<Chunk>, ImportError> {
        let Some(task) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        let (buf, result) = task.await.map_err(|e| ImportError::Io {
            what: "writing",
            path: self.path.clone(),
            error: std::io::Error::other(e),
        })?;
        result.map_err(|e| write_error(&self.path, &self.dir, e))?;
        Ok(Some(buf))
    }

    /// Writes the non-zero blocks of `buf[..len]` (guest offset `offset`, a multiple of
    /// [`CHUNK`]); returns a buffer to reuse.
    async fn write(&mut self, offset: u64, buf: Chunk, len: usize) -> Result<Chunk, ImportError> {
        let spare = if self.in_flight.len() >= self.writes_in_flight() {
            self.settle().await?
        } else {
            None
        };
        let file = self.file.clone();
        let clusters = self.clusters.clone();
        self.in_flight
            .push_back(tokio::task::spawn_blocking(move || {
                let result = write_runs(&file, clusters.as_deref(), &buf[..len], offset);
                (buf, result)
            }));
        Ok(spare.unwrap_or_else(Chunk::new))
    }

    /// How many writes may be under way at once.
    fn writes_in_flight(&self) -> usize {
        if self.file.direct.is_some() {
            DIRECT_WRITES_IN_FLIGHT
        } else {
            1
        }
    }

    /// Completes every write: a qcow2 volume gets its tables and header, a plain file is cut to
    /// `len` bytes if given, and a volume is made durable.
    async fn finish(mut self, len: Option<u64>) -> Result<(), ImportError> {
        while self.settle().await?.is_some() {}
        let Sink {
            file,
            path,
            dir,
            clusters,
            durable,
            ..
        } = self;
        tokio::task::spawn_blocking(move || {
            if let Some(layout) = clusters {
                let layout = layout.lock().unwrap_or_else(|p| p.into_inner());
                for (offset, bytes) in layout.finish() {
                    file.buffered.write_all_at(&bytes, offset)?;
                }
            }
            if let Some(len) = len {
                file.buffered.set_len(len)?;
            }
            if durable {
                file.buffered.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r)
        .map_err(|e| write_error(&path, &dir, e))
    }
}

/// Writes the runs of `data` (guest offset `offset`) that are not all zeroes: at the same offset
/// in a plain file, into newly allocated clusters in a qcow2 volume.
fn write_runs(
    file: &Handles,
    clusters: Option<&Mutex<qcow2::Layout>>,
    data: &[u8],
    offset: u64,
) -> std::io::Result<()> {
    let granule = match clusters {
        Some(_) => qcow2::CLUSTER as usize,
        None => FILE_GRANULE,
    };
    for (start, end) in nonzero_runs(data, granule) {
        let at = match clusters {
            None => offset + start as u64,
            Some(layout) => layout
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .allocate(offset + start as u64, (end - start) as u64)
                .map_err(std::io::Error::other)?,
        };
        file.write_at(&data[start..end], at)?;
    }
    Ok(())
}

/// True when every byte is zero.
fn is_zero(block: &[u8]) -> bool {
    let mut chunks = block.chunks_exact(64);
    let whole = chunks.all(|c| c.iter().fold(0u8, |acc, b| acc | b) == 0);
    whole && chunks.remainder().iter().all(|b| *b == 0)
}

/// `(start, end)` of the runs of `granule`-sized blocks of `buf` that hold a non-zero byte.
fn nonzero_runs(buf: &[u8], granule: usize) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for (i, block) in buf.chunks(granule).enumerate() {
        if is_zero(block) {
            continue;
        }
        let (start, end) = (i * granule, i * granule + block.len());
        match runs.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => runs.push((start, end)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_skip_zero_blocks() {
        let mut buf = vec![0u8; 10 * 4096 + 100];
        buf[5] = 1;
        buf[4096 + 7] = 1;
        buf[5 * 4096] = 3;
        buf[10 * 4096 + 99] = 9;
        assert_eq!(
            nonzero_runs(&buf, 4096),
            vec![
                (0, 8192),
                (5 * 4096, 6 * 4096),
                (10 * 4096, 10 * 4096 + 100)
            ]
        );
        assert!(nonzero_runs(&[0u8; 200], 64).is_empty());
        assert!(is_zero(&[]));
        assert!(!is_zero(&[0, 0, 0, 1]));
    }
}
