//! A small NBD client for writing into a block export (`qemu-storage-daemon`, `qemu-nbd`, another
//! agent), so that data arriving as a stream can be written into any image format QEMU supports
//! without a scratch copy: QEMU's block layer does the format work, this client only moves bytes.
//!
//! It speaks the fixed-newstyle handshake (`NBD_OPT_GO`, falling back to `NBD_OPT_EXPORT_NAME`
//! for old servers) and the write side of the transmission phase: `WRITE`, `WRITE_ZEROES`,
//! `FLUSH`, `DISC`. Requests are pipelined: up to [`MAX_IN_FLIGHT`] are outstanding while a
//! reader task collects the simple replies; the first failed reply fails every later call.
//! Structured replies are never negotiated, and reads are not implemented (nothing needs them yet).
//!
//! Protocol reference: <https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md>.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Requests outstanding at once; QEMU's server handles 16 per connection concurrently.
pub const MAX_IN_FLIGHT: usize = 16;
/// The largest payload sent in one request (QEMU's server accepts up to 32 MiB).
const MAX_PAYLOAD: usize = 16 << 20;
/// The send buffer asked for on unix sockets.
const SEND_BUFFER: usize = 4 << 20;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_FLAG_ERROR: u32 = 1 << 31;
const REP_ERR_UNSUP: u32 = REP_FLAG_ERROR | 1;
const INFO_EXPORT: u16 = 0;

/// Transmission flags the server announces for the export.
pub mod flags {
    pub const HAS_FLAGS: u16 = 1 << 0;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
}

const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_WRITE_ZEROES: u16 = 6;

/// NBD failures. Clone so that the first failed reply can be handed to every later call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NbdError {
    #[error("cannot connect to the NBD server at {path}: {why}")]
    Connect { path: String, why: String },
    #[error("the NBD connection failed while {op}: {why}")]
    Io { op: &'static str, why: String },
    #[error("NBD protocol error: {0}")]
    Protocol(String),
    #[error("the NBD server refused export {export:?}: {why}")]
    Refused { export: String, why: String },
    #[error("the NBD export is read-only")]
    ReadOnly,
    #[error(
        "NBD {cmd} of {len} bytes at offset {offset} is beyond the export's end ({size} bytes)"
    )]
    OutOfRange {
        cmd: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("NBD {cmd} of {len} bytes at offset {offset} failed: {}", errno_name(*errno))]
    Command {
        cmd: &'static str,
        offset: u64,
        len: u64,
        errno: u32,
    },
}

impl NbdError {
    /// True when the server ran out of space (`ENOSPC`).
    pub fn is_no_space(&self) -> bool {
        matches!(self, NbdError::Command { errno: 28, .. })
    }
}

fn errno_name(errno: u32) -> String {
    let name = match errno {
        1 => "operation not permitted (EPERM)",
        5 => "I/O error (EIO)",
        12 => "out of memory (ENOMEM)",
        22 => "invalid argument (EINVAL)",
        28 => "no space left on device (ENOSPC)",
        75 => "value too large (EOVERFLOW)",
        95 => "not supported (ENOTSUP)",
        108 => "server shutting down (ESHUTDOWN)",
        _ => return format!("error {errno}"),
    };
    name.to_string()
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> NbdError {
    move |e| NbdError::Io {
        op,
        why: e.to_string(),
    }
}

fn cmd_name(cmd: u16) -> &'static str {
    match cmd {
        CMD_WRITE => "WRITE",
        CMD_FLUSH => "FLUSH",
        CMD_WRITE_ZEROES => "WRITE_ZEROES",
        CMD_DISC => "DISC",
        _ => "command",
    }
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    cmd: u16,
    offset: u64,
    len: u64,
}

#[derive(Debug, Default)]
struct Shared {
    in_flight: Mutex<HashMap<u64, Pending>>,
    failed: Mutex<Option<NbdError>>,
    closing: AtomicBool,
}

impl Shared {
    fn fail(&self, e: NbdError) {
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.get_or_insert(e);
    }
    fn failure(&self) -> Option<NbdError> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pending>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A connected export in the transmission phase.
pub struct NbdClient {
    writer: Writer,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    next_handle: u64,
    size: u64,
    flags: u16,
    reader: JoinHandle<()>,
}

impl std::fmt::Debug for NbdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdClient")
            .field("size", &self.size)
            .field("flags", &self.flags)
            .finish()
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl NbdClient {
    /// Connects to a server on a unix socket and opens `export`.
    pub async fn connect_unix(path: &Path, export: &str) -> Result<Self, NbdError> {
        let stream =
            tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| NbdError::Connect {
                    path: path.display().to_string(),
                    why: e.to_string(),
                })?;
        // A unix socket holds ~200 KiB by default: a 2 MiB write would wake the server a
        // dozen times. Room for whole requests keeps both sides streaming (capped by
        // net.core.wmem_max; failing to get it only costs speed).
        let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
        Self::handshake(stream, export).await
    }

    /// Negotiates `export` over an established connection (unix socket, TCP, TLS stream).
    pub async fn handshake<S>(mut stream: S, export: &str) -> Result<Self, NbdError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (size, flags) = negotiate(&mut stream, export).await?;
        let (read, write) = tokio::io::split(stream);
        let shared = Arc::new(Shared::default());
        let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        let reader = tokio::spawn(read_replies(read, shared.clone(), slots.clone()));
        Ok(Self {
            writer: Box::new(write),
            shared,
            slots,
            next_handle: 1,
            size,
            flags,
            reader,
        })
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The export's transmission flags (see [`flags`]).
    pub fn flags(&self) -> u16 {
        self.flags
    }

    fn failed(&self) -> NbdError {
        self.shared
            .failure()
            .unwrap_or_else(|| NbdError::Protocol("the reply reader stopped".into()))
    }

    async fn send(
        &mut self,
        cmd: u16,
        offset: u64,
        len: u64,
        payload: Option<&[u8]>,
    ) -> Result<(), NbdError> {
        if let Some(e) = self.shared.failure() {
            return Err(e);
        }
        if (cmd == CMD_WRITE || cmd == CMD_WRITE_ZEROES) && offset.saturating_add(len) > self.size {
            return Err(NbdError::OutOfRange {
                cmd: cmd_name(cmd),
                offset,
                len,
                size: self.size,
            });
        }
        let permit = self.slots.acquire().await.map_err(|_| self.failed())?;
        permit.forget();
        let handle = self.next_handle;
        self.next_handle += 1;
        if cmd != CMD_DISC {
            self.shared
                .in_flight()
                .insert(handle, Pending { cmd, offset, len });
        }
        let mut header = [0u8; 28];
        header[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        header[6..8].copy_from_slice(&cmd.to_be_bytes());
        header[8..16].copy_from_slice(&handle.to_be_bytes());
        header[16..24].copy_from_slice(&offset.to_be_bytes());
        header[24..28].copy_from_slice(&(len as u32).to_be_bytes());
        self.writer
            .write_all(&header)
            .await
            .map_err(io("sending a request"))?;
        if let Some(payload) = payload {
            self.writer
                .write_all(payload)
                .await
                .map_err(io("sending write data"))?;
        }
        Ok(())
    }

    /// Writes `data` at `offset`. Returns once the request is sent; its reply is checked by the
    /// reader task, and a failure shows in a later call (at the latest [`flush`](Self::flush)).
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        if self.flags & flags::READ_ONLY != 0 {
            return Err(NbdError::ReadOnly);
        }
        let mut done = 0usize;
        while done < data.len() {
            let n = (data.len() - done).min(MAX_PAYLOAD);
            let part = &data[done..done + n];
            self.send(CMD_WRITE, offset + done as u64, n as u64, Some(part))
                .await?;
            done += n;
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeroes, deallocating them where the server can.
    /// Servers without `WRITE_ZEROES` get explicit zero writes.
    pub async fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), NbdError> {
        if self.flags & flags::READ_ONLY != 0 {
            return Err(NbdError::ReadOnly);
        }
        let mut done = 0u64;
        if self.flags & flags::SEND_WRITE_ZEROES == 0 {
            let step = MAX_PAYLOAD as u64;
            let zeroes = vec![0u8; len.min(step) as usize];
            while done < len {
                let n = (len - done).min(step) as usize;
                self.write(offset + done, &zeroes[..n]).await?;
                done += n as u64;
            }
            return Ok(());
        }
        while done < len {
            // The length field has 32 bits; 2 GiB pieces keep any cluster alignment.
            let n = (len - done).min(1 << 31);
            self.send(CMD_WRITE_ZEROES, offset + done, n, None).await?;
            done += n;
        }
        Ok(())
    }

    /// Waits until every request sent so far has its reply.
    async fn drain(&mut self) -> Result<(), NbdError> {
        let all = self
            .slots
            .acquire_many(MAX_IN_FLIGHT as u32)
            .await
            .map_err(|_| self.failed())?;
        drop(all);
        match self.shared.failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for every write and makes it durable on the server (`FLUSH`, if the server offers
    /// it). Any failed earlier request is returned here at the latest.
    pub async fn flush(&mut self) -> Result<(), NbdError> {
        self.drain().await?;
        if self.flags & flags::SEND_FLUSH != 0 {
            self.send(CMD_FLUSH, 0, 0, None).await?;
            self.drain().await?;
        }
        Ok(())
    }

    /// Flushes, then ends the session cleanly (`DISC`).
    pub async fn disconnect(mut self) -> Result<(), NbdError> {
        self.flush().await?;
        self.shared.closing.store(true, Ordering::SeqCst);
        self.send(CMD_DISC, 0, 0, None).await?;
        self.writer
            .shutdown()
            .await
            .map_err(io("closing the connection"))?;
        Ok(())
    }
}

/// Collects simple replies, frees their slots, and records the first failure.
async fn read_replies<R: AsyncRead + Unpin>(
    mut read: R,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
) {
    let mut reply = [0u8; 16];
    loop {
        if let Err(e) = read.read_exact(&mut reply).await {
            let idle = shared.in_flight().is_empty();
            if !(idle && shared.closing.load(Ordering::SeqCst)) {
                shared.fail(io("reading replies")(e));
            }
            slots.close();
            return;
        }
        let magic = u32::from_be_bytes(reply[0..4].try_into().expect("4 bytes"));
        let errno = u32::from_be_bytes(reply[4..8].try_into().expect("4 bytes"));
        let handle = u64::from_be_bytes(reply[8..16].try_into().expect("8 bytes"));
        if magic != SIMPLE_REPLY_MAGIC {
            shared.fail(NbdError::Protocol(format!(
                "unexpected reply magic {magic:#x}"
            )));
            slots.close();
            return;
        }
        let Some(pending) = shared.in_flight().remove(&handle) else {
            shared.fail(NbdError::Protocol(format!(
                "reply for unknown handle {handle}"
            )));
            slots.close();
            return;
        };
        if errno != 0 {
            shared.fail(NbdError::Command {
                cmd: cmd_name(pending.cmd),
                offset: pending.offset,
                len: pending.len,
                errno,
            });
        }
        slots.add_permits(1);
    }
}

/// The fixed-newstyle handshake; returns the export's size and transmission flags.
async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
) -> Result<(u64, u16), NbdError> {
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting)
        .await
        .map_err(io("reading the server greeting"))?;
    let magic = u64::from_be_bytes(greeting[0..8].try_into().expect("8 bytes"));
    let opt = u64::from_be_bytes(greeting[8..16].try_into().expect("8 bytes"));
    if magic != NBDMAGIC || opt != IHAVEOPT {
        return Err(NbdError::Protocol(
            "not a newstyle NBD server (bad greeting)".into(),
        ));
    }
    let server_flags = u16::from_be_bytes([greeting[16], greeting[17]]);
    if server_flags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(NbdError::Protocol(
            "the server does not speak fixed newstyle".into(),
        ));
    }
    let no_zeroes = server_flags & FLAG_NO_ZEROES != 0;
    let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (server_flags & FLAG_NO_ZEROES));
    s.write_all(&client_flags.to_be_bytes())
        .await
        .map_err(io("sending client flags"))?;

    // NBD_OPT_GO: name length, name, no information requests.
    let name = export.as_bytes();
    let mut data = Vec::with_capacity(6 + name.len());
    data.extend_from_slice(&(name.len() as u32).to_be_bytes());
    data.extend_from_slice(name);
    data.extend_from_slice(&0u16.to_be_bytes());
    send_option(s, OPT_GO, &data).await?;
    let mut export_info = None;
    loop {
        let mut head = [0u8; 20];
        s.read_exact(&mut head)
            .await
            .map_err(io("reading an option reply"))?;
        let magic = u64::from_be_bytes(head[0..8].try_into().expect("8 bytes"));
        let reply = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes"));
        let len = u32::from_be_bytes(head[16..20].try_into().expect("4 bytes"));
        if magic != OPT_REPLY_MAGIC {
            return Err(NbdError::Protocol(format!(
                "unexpected option reply magic {magic:#x}"
            )));
        }
        if len > 64 << 10 {
            return Err(NbdError::Protocol(format!("option reply of {len} bytes")));
        }
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body)
            .await
            .map_err(io("reading an option reply"))?;
        match reply {
            REP_INFO
                if body.len() >= 12 && u16::from_be_bytes([body[0], body[1]]) == INFO_EXPORT =>
            {
                let size = u64::from_be_bytes(body[2..10].try_into().expect("8 bytes"));
                let flags = u16::from_be_bytes([body[10], body[11]]);
                export_info = Some((size, flags));
            }
            REP_ACK => {
                return export_info.ok_or_else(|| {
                    NbdError::Protocol("the server sent no export information".into())
                });
            }
            REP_ERR_UNSUP => return export_name(s, export, no_zeroes).await,
            r if r & REP_FLAG_ERROR != 0 => {
                let text = String::from_utf8_lossy(&body).into_owned();
                return Err(NbdError::Refused {
                    export: export.to_string(),
                    why: if text.is_empty() {
                        format!("option error {:#x}", r & !REP_FLAG_ERROR)
                    } else {
                        text
                    },
                });
            }
            // Other information and unknown replies.
            _ => {}
        }
    }
}

async fn send_option<S: AsyncWrite + Unpin>(
    s: &mut S,
    opt: u32,
    data: &[u8],
) -> Result<(), NbdError> {
    let mut msg = Vec::with_capacity(16 + data.len());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&opt.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    s.write_all(&msg).await.map_err(io("sending an option"))
}

/// The old way to pick an export, for servers without `NBD_OPT_GO`: a refusal closes the
/// connection without a reason.
async fn export_name<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    export: &str,
    no_zeroes: bool,
) -> Result<(u64, u16), NbdError> {
    send_option(s, OPT_EXPORT_NAME, export.as_bytes()).await?;
    let mut reply = vec![0u8; if no_zeroes { 10 } else { 134 }];
    s.read_exact(&mut reply)
        .await
        .map_err(|_| NbdError::Refused {
            export: export.to_string(),
            why: "the server closed the connection (no such export?)".into(),
        })?;
    let size = u64::from_be_bytes(reply[0..8].try_into().expect("8 bytes"));
    let flags = u16::from_be_bytes([reply[8], reply[9]]);
    Ok((size, flags))
}
