//! The connection a download reads: TLS, or plain TCP whose large reads are taken whole.
//!
//! Why: a body read through the reactor returns whatever the socket holds, a few segments, and
//! then waits for the next readiness event, so a fast sender wakes the importer for every few
//! dozen KiB. On loopback with a `sendfile` server that cost about 1.4 times the time and twice
//! the CPU of receiving a 2 GiB raw disk whole (docs/benchmarks.md, "Image import throughput"). A large read on plain TCP
//! therefore waits for readiness like any other (cancellable, under the download's idle
//! timeout), then lets the kernel fill the caller's buffer in one `recv(MSG_WAITALL)` on a
//! worker that tokio was told blocks ([`tokio::task::block_in_place`]), for at most
//! [`BULK_WAIT`]: a slow or stalled sender returns what came by then. A `SO_RCVLOWAT` would do
//! the same from the reactor, but no safe binding sets it. TLS records are decrypted in user
//! space, so they are read as they come.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Reads at least this large are taken whole; smaller ones (heads, chunk-size lines) go
/// through the reactor.
const BULK_MIN: usize = 256 << 10;
/// The longest one whole read blocks its worker: a bound on how late a cancelled import or a
/// stalled sender is noticed.
pub(super) const BULK_WAIT: Duration = Duration::from_millis(200);

/// A byte stream to a server other than plain TCP: TLS, or a test's.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A byte stream to a server.
pub(super) enum Conn {
    Tcp(TcpStream),
    /// TLS, or a test's stream.
    Stream(Box<dyn Io>),
}

impl Conn {
    /// A plain TCP connection; its reads may be taken whole.
    pub(super) fn tcp(tcp: TcpStream) -> Self {
        // Only blocking reads time out: the whole reads below.
        let _ = socket2::SockRef::from(&tcp).set_read_timeout(Some(BULK_WAIT));
        Conn::Tcp(tcp)
    }

    /// Reads the next bytes into `out`, as many as arrive within [`BULK_WAIT`] once any has;
    /// 0 at the end of the stream.
    pub(super) async fn read_bulk(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let tcp = match self {
            Conn::Tcp(tcp) if out.len() >= BULK_MIN && may_block_in_place() => tcp,
            _ => return self.read(out).await,
        };
        loop {
            tcp.readable().await?;
            // A read that times out with nothing clears the readiness, so the next wait is the
            // reactor's again.
            match tcp.try_io(Interest::READABLE, || {
                tokio::task::block_in_place(|| recv_whole(tcp, out))
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return other,
            }
        }
    }
}

/// True on a multi-threaded runtime, where a worker may block; a current-thread runtime (some
/// tests) reads through the reactor only.
fn may_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// One blocking `recv(MSG_WAITALL)` into `out`: returns when it is full, at the end of the
/// stream, or after [`BULK_WAIT`] with what came (`WouldBlock` if nothing did). The socket is
/// non-blocking again afterwards, whatever the outcome.
fn recv_whole(tcp: &TcpStream, out: &mut [u8]) -> io::Result<usize> {
    let sock = socket2::SockRef::from(tcp);
    sock.set_nonblocking(false)?;
    let got = loop {
        match rustix::net::recv(tcp, &mut *out, rustix::net::RecvFlags::WAITALL) {
            Err(rustix::io::Errno::INTR) => continue,
            other => break other,
        }
    };
    sock.set_nonblocking(true)?;
    Ok(got?.0)
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Stream(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, data),
            Conn::Stream(s) => Pin::new(s).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Stream(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Stream(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A loopback connection whose server side runs `serve` on a thread.
    async fn connected(serve: impl FnOnce(std::net::TcpStream) + Send + 'static) -> Conn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve(listener.accept().unwrap().0));
        Conn::tcp(TcpStream::connect(addr).await.unwrap())
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    fn is_nonblocking(conn: &Conn) -> bool {
        let Conn::Tcp(tcp) = conn else {
            panic!("not TCP")
        };
        socket2::SockRef::from(tcp).nonblocking().unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn whole_reads_return_every_byte_in_order() {
        let data = pattern(5 * BULK_MIN + 12345);
        let sent = data.clone();
        let mut conn = connected(move |mut s| {
            // Pieces with pauses: some reads end at BULK_WAIT with what came.
            for (i, piece) in sent.chunks(300_000).enumerate() {
                s.write_all(piece).unwrap();
                if i % 2 == 1 {
                    std::thread::sleep(BULK_WAIT + BULK_WAIT / 2);
                }
            }
        })
        .await;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 4 * BULK_MIN];
        loop {
            let n = conn.read_bulk(&mut buf).await.unwrap();
            assert!(is_nonblocking(&conn), "the socket is left blocking");
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes differ");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_sender_returns_what_came_and_the_wait_stays_cancellable() {
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let mut conn = connected(move |mut s| {
            s.write_all(b"first bytes").unwrap();
            // Holds the connection open, silent, until the test is done (or long past the
            // wait below, so a read that blocks its worker ends and the test fails, not hangs).
            let _ = hold.recv_timeout(Duration::from_secs(10));
        })
        .await;
        let mut buf = vec![0u8; 2 * BULK_MIN];
        let n = tokio::time::timeout(Duration::from_secs(30), conn.read_bulk(&mut buf))
            .await
            .expect("a whole read waited for bytes that never came")
            .unwrap();
        assert_eq!(&buf[..n], b"first bytes");
        // Nothing more comes: the wait is the reactor's, so a timeout around it ends it.
        let waited = tokio::time::timeout(BULK_WAIT * 3, conn.read_bulk(&mut buf)).await;
        assert!(
            waited.is_err(),
            "a read returned on a silent connection: {waited:?}"
        );
        assert!(is_nonblocking(&conn));
        drop(release);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_reads_through_the_reactor() {
        let data = pattern(3 * BULK_MIN);
        let sent = data.clone();
        let mut conn = connected(move |mut s| s.write_all(&sent).unwrap()).await;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2 * BULK_MIN];
        loop {
            let n = conn.read_bulk(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == data);
    }
}
