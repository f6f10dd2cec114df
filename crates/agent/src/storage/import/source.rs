//! The source side of an import: bytes as they arrive from a download or an upload, counted
//! against the announced length, hashed for the checksum and turned into progress. Everything
//! downstream (decompression, format detection, writing) sees one continuous stream, which is
//! why an HTTP download can resume underneath it on any path.

use super::{http, ImportError, Progress};
use bytes::{Bytes, BytesMut};
use ring::digest;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt};

/// A checksum to verify the source bytes against.
#[derive(Debug, Clone)]
pub(crate) struct Checksum {
    name: &'static str,
    algorithm: &'static digest::Algorithm,
    expected: String,
}

impl Checksum {
    /// Parses `sha256:<hex>` (also sha1, sha384, sha512).
    pub(crate) fn parse(spec: &str) -> Result<Self, ImportError> {
        let bad = || ImportError::InvalidChecksum {
            spec: spec.to_string(),
        };
        let (name, hex) = spec.trim().split_once(':').ok_or_else(bad)?;
        let (name, algorithm): (&'static str, _) = match name.to_ascii_lowercase().as_str() {
            "sha1" => ("sha1", &digest::SHA1_FOR_LEGACY_USE_ONLY),
            "sha256" => ("sha256", &digest::SHA256),
            "sha384" => ("sha384", &digest::SHA384),
            "sha512" => ("sha512", &digest::SHA512),
            _ => return Err(bad()),
        };
        let expected = hex.trim().to_ascii_lowercase();
        if expected.len() != algorithm.output_len() * 2
            || !expected.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(bad());
        }
        Ok(Self {
            name,
            algorithm,
            expected,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Turns the import's stages into one increasing percentage (see [`Progress`]).
pub(crate) struct ProgressState {
    callback: Progress,
    inner: Mutex<ProgressInner>,
}

struct ProgressInner {
    last: f64,
    /// The part of 0..100 the source's bytes cover, once the path is known.
    download_share: Option<f64>,
    /// True when the source's length is known (otherwise only 100 is ever reported).
    known: bool,
}

impl ProgressState {
    pub(crate) fn new(callback: Progress) -> Self {
        Self {
            callback,
            inner: Mutex::new(ProgressInner {
                last: 0.0,
                download_share: None,
                known: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProgressInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the share of the download in the whole (1.0 when nothing follows it).
    pub(crate) fn set_download_share(&self, share: f64) {
        self.lock().download_share = Some(share);
    }

    fn report(&self, value: f64) {
        let value = value.clamp(0.0, 99.9);
        let mut inner = self.lock();
        // At most every 0.1%, so a fast import makes a few hundred calls, not millions.
        if inner.known && value >= inner.last + 0.1 {
            inner.last = value;
            drop(inner);
            (self.callback.0)(value);
        }
    }

    fn source(&self, read: u64, total: Option<u64>) {
        let Some(total) = total.filter(|t| *t > 0) else {
            return;
        };
        let share = {
            let mut inner = self.lock();
            inner.known = true;
            inner.download_share
        };
        if let Some(share) = share {
            self.report(read as f64 / total as f64 * 100.0 * share);
        }
    }

    /// qemu-img's progress through the step after the download (0 to 100).
    pub(crate) fn after_download(&self, percent: f64) {
        let share = self.lock().download_share.unwrap_or(1.0);
        self.report(share * 100.0 + (1.0 - share) * percent.clamp(0.0, 100.0));
    }

    pub(crate) fn done(&self) {
        let mut inner = self.lock();
        inner.last = 100.0;
        drop(inner);
        (self.callback.0)(100.0);
    }
}

/// Where the bytes come from.
pub(crate) enum Input<'a> {
    Http(Box<http::Download<'a>>),
    Stream(&'a mut (dyn AsyncRead + Unpin + Send)),
}

/// The source stream: counted, hashed, reported.
pub(crate) struct Source<'a> {
    input: Input<'a>,
    /// Read from the input and counted, not yet handed on.
    pending: Bytes,
    read: u64,
    total: Option<u64>,
    digest: Option<(digest::Context, Checksum)>,
    progress: &'a ProgressState,
    what: String,
    ended: bool,
}

const READ_SIZE: usize = 256 << 10;

impl<'a> Source<'a> {
    pub(crate) fn new(
        input: Input<'a>,
        total: Option<u64>,
        checksum: Option<Checksum>,
        progress: &'a ProgressState,
        what: String,
    ) -> Self {
        Self {
            input,
            pending: Bytes::new(),
            read: 0,
            total,
            digest: checksum.map(|c| (digest::Context::new(c.algorithm), c)),
            progress,
            what,
            ended: false,
        }
    }

    /// The announced length of the source, if any.
    pub(crate) fn total(&self) -> Option<u64> {
        self.total
    }

    fn interrupted(&self, why: String) -> ImportError {
        ImportError::Interrupted {
            what: self.what.clone(),
            got: self.read,
            expected: self.total,
            why,
        }
    }

    /// Reads the next bytes of the input into `out` (not empty), counts and hashes them; 0 at
    /// the end.
    async fn fill(&mut self, out: &mut [u8]) -> Result<usize, ImportError> {
        if self.ended {
            return Ok(0);
        }
        let n = match &mut self.input {
            Input::Http(download) => download.read(out).await?,
            Input::Stream(reader) => match reader.read(out).await {
                Ok(n) => n,
                Err(e) => return Err(self.interrupted(format!("reading it failed: {e}"))),
            },
        };
        if n == 0 {
            self.ended = true;
            if self.total.is_some_and(|t| self.read < t) {
                return Err(self.interrupted("the stream ended early".into()));
            }
            return Ok(0);
        }
        self.read += n as u64;
        if self.total.is_some_and(|t| self.read > t) {
            return Err(self.interrupted("more bytes arrived than were announced".into()));
        }
        if let Some((ctx, _)) = &mut self.digest {
            ctx.update(&out[..n]);
        }
        self.progress.source(self.read, self.total);
        Ok(n)
    }

    /// The next chunk from the input, in a new buffer.
    async fn fetch(&mut self) -> Result<Option<Bytes>, ImportError> {
        let mut chunk = BytesMut::zeroed(READ_SIZE);
        let n = self.fill(&mut chunk).await?;
        chunk.truncate(n);
        Ok((n > 0).then(|| chunk.freeze()))
    }

    /// The first `n` bytes (fewer if the source is shorter), kept for reading again.
    pub(crate) async fn head(&mut self, n: usize) -> Result<Bytes, ImportError> {
        while self.pending.len() < n {
            let Some(chunk) = self.fetch().await? else {
                break;
            };
            if self.pending.is_empty() {
                self.pending = chunk;
            } else {
                let mut joined = BytesMut::with_capacity(self.pending.len() + chunk.len());
                joined.extend_from_slice(&self.pending);
                joined.extend_from_slice(&chunk);
                self.pending = joined.freeze();
            }
        }
        Ok(self.pending.clone())
    }

    /// The next chunk of the stream; `None` at its end.
    pub(crate) async fn next(&mut self) -> Result<Option<Bytes>, ImportError> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        self.fetch().await
    }

    /// Reads the next bytes into `out`: what [`Self::head`] kept first, then straight from the input;
    /// 0 at the end.
    pub(crate) async fn read(&mut self, out: &mut [u8]) -> Result<usize, ImportError> {
        if out.is_empty() {
            return Ok(0);
        }
        if self.pending.is_empty() {
            return self.fill(out).await;
        }
        let n = out.len().min(self.pending.len());
        out[..n].copy_from_slice(&self.pending[..n]);
        bytes::Buf::advance(&mut self.pending, n);
        Ok(n)
    }

    /// After the whole stream was read: its length, once the checksum matched.
    pub(crate) fn finish(self) -> Result<u64, ImportError> {
        if let Some((ctx, checksum)) = self.digest {
            let got = hex(ctx.finish().as_ref());
            if got != checksum.expected {
                return Err(ImportError::Checksum {
                    what: self.what,
                    expected: format!("{}:{}", checksum.name, checksum.expected),
                    got: format!("{}:{got}", checksum.name),
                });
            }
        }
        Ok(self.read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_specs() {
        let ok = format!("sha256:{}", "aB".repeat(32));
        assert_eq!(Checksum::parse(&ok).unwrap().expected, "ab".repeat(32));
        assert!(Checksum::parse(&format!("SHA512:{}", "0".repeat(128))).is_ok());
        for bad in [
            "",
            "sha256",
            "md5:00",
            "sha256:xyz",
            &format!("sha256:{}", "0".repeat(63)),
        ] {
            assert!(Checksum::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn counts_hashes_and_reports() {
        let data = b"hello world".to_vec();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let state = ProgressState::new(Progress::new(move |p| s.lock().unwrap().push(p)));
        state.set_download_share(1.0);
        let spec = "sha256:b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9";
        let mut reader = data.as_slice();
        let mut src = Source::new(
            Input::Stream(&mut reader),
            Some(11),
            Some(Checksum::parse(spec).unwrap()),
            &state,
            "test".into(),
        );
        assert_eq!(&src.head(5).await.unwrap()[..], b"hello world");
        let mut out = [0u8; 4];
        assert_eq!(src.read(&mut out).await.unwrap(), 4);
        while src.next().await.unwrap().is_some() {}
        assert_eq!(src.finish().unwrap(), 11);
        assert_eq!(*seen.lock().unwrap(), vec![99.9]);

        let mut short = &data[..5];
        let mut src = Source::new(
            Input::Stream(&mut short),
            Some(11),
            None,
            &state,
            "the upload".into(),
        );
        let err = loop {
            match src.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("no error"),
                Err(e) => break e,
            }
        };
        assert_eq!(
            err.to_string(),
            "the upload stopped after 5 of 11 bytes: the stream ended early"
        );
    }
}
