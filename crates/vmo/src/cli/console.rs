//! `vmo console VM` and `vmo vnc VM`, as virtctl offers them: the serial console attached to this
//! terminal (raw mode, `Ctrl+]` detaches), and a local TCP port that any VNC viewer can use, each
//! through the server's websocket subresources.

use super::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use vmo_client::{Client, ClientError, WebSocket};

/// The byte `Ctrl+]` sends: detach, as in telnet and virtctl.
const ESCAPE: u8 = 0x1d;

#[derive(Args, Debug)]
pub struct ConsoleArgs {
    /// The VirtualMachine (or VirtualMachineInstance).
    pub name: String,
    /// How long to wait for the VM to be running, in seconds (0: do not wait).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Args, Debug)]
pub struct VncArgs {
    /// The VirtualMachine (or VirtualMachineInstance).
    pub name: String,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: std::net::IpAddr,
    /// Local port to listen on (0: any free port).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
}

fn subresource(ns: &str, name: &str, which: &str) -> String {
    format!(
        "/apis/subresources.kubevirt.io/v1/namespaces/{ns}/virtualmachineinstances/{name}/{which}"
    )
}

/// Opens the websocket, waiting up to `timeout` while the VM is not running yet.
async fn open(client: &Client, path: &str, timeout: Duration) -> anyhow::Result<WebSocket> {
    let started = Instant::now();
    let mut told = false;
    loop {
        match client.websocket(path).await {
            Ok(ws) => return Ok(ws),
            Err(ClientError::Api(s))
                if matches!(s.code, 400 | 404 | 503) && started.elapsed() < timeout =>
            {
                if !told {
                    eprintln!("Waiting for the VM to run ({})", s.message);
                    told = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Puts the terminal in raw mode while alive (so keys go to the guest as typed), restoring it on
/// drop. Uses `stty`, which every system with a terminal has.
struct RawTerminal {
    saved: Option<String>,
}

impl RawTerminal {
    fn enter() -> Self {
        if !std::io::stdin().is_terminal() {
            return Self { saved: None };
        }
        let stty = |args: &[&str]| {
            std::process::Command::new("stty")
                .args(args)
                .stdin(std::process::Stdio::inherit())
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        let saved = stty(&["-g"]);
        if saved.is_some() {
            stty(&["raw", "-echo"]);
        }
        Self { saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = std::process::Command::new("stty")
                .arg(saved)
                .stdin(std::process::Stdio::inherit())
                .status();
        }
    }
}

/// Standard input, read on a plain thread: a detached thread blocked in `read` does not keep the
/// process alive after the session ends, as a runtime's blocking task would.
fn stdin_reader() -> tokio::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 4096];
        loop {
            match std::io::Read::read(&mut stdin, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// `vmo console VM`.
pub async fn console(ctx: &Context, args: ConsoleArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let ns = ctx.namespace(&client);
    let path = subresource(&ns, &args.name, "console");
    let ws = open(&client, &path, Duration::from_secs(args.timeout)).await?;
    eprintln!(
        "Successfully connected to {ns}/{} console. The escape sequence is ^]",
        args.name
    );
    let raw = RawTerminal::enter();
    let (mut tx, mut rx) = ws.split();
    let mut input = stdin_reader();
    let mut input_open = true;
    let mut stdout = std::io::stdout();
    let ended = loop {
        tokio::select! {
            message = rx.next() => match message {
                Some(Ok(Message::Binary(bytes))) => {
                    stdout.write_all(&bytes)?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Text(text))) => {
                    stdout.write_all(text.as_bytes())?;
                    stdout.flush()?;
                }
                Some(Ok(Message::Close(_))) | None => break "the console was closed",
                Some(Err(e)) => {
                    drop(raw);
                    anyhow::bail!("console connection failed: {e}");
                }
                Some(Ok(_)) => {}
            },
            // Without a terminal (a pipe), end of input leaves the output flowing.
            read = input.recv(), if input_open => match read {
                None => input_open = false,
                Some(keys) => {
                    let (send, detach) = match keys.iter().position(|b| *b == ESCAPE) {
                        Some(i) => (&keys[..i], true),
                        None => (&keys[..], false),
                    };
                    if !send.is_empty() {
                        tx.send(Message::binary(send.to_vec())).await?;
                    }
                    if detach {
                        let _ = tx.send(Message::Close(None)).await;
                        break "detached";
                    }
                }
            },
        }
    };
    drop(raw);
    eprintln!("\r\n[{ended}]");
    Ok(())
}

/// `vmo vnc VM`: serves the VM's VNC on a local port until interrupted.
pub async fn vnc(ctx: &Context, args: VncArgs) -> anyhow::Result<()> {
    let client = ctx.client()?;
    let ns = ctx.namespace(&client);
    let path = subresource(&ns, &args.name, "vnc");
    // Fail early, with the server's words, if the VM cannot be reached.
    drop(open(&client, &path, Duration::ZERO).await?);
    let listener = tokio::net::TcpListener::bind((args.address, args.port)).await?;
    let local = listener.local_addr()?;
    println!(
        "VNC of {ns}/{} listening on {local}; point a VNC viewer at it (e.g. `vncviewer {}::{}`). Ctrl+C stops.",
        args.name,
        local.ip(),
        local.port()
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = accepted?;
                let (client, path) = (client.clone(), path.clone());
                tokio::spawn(async move {
                    match client.websocket(&path).await {
                        Ok(ws) => vmo_apiserver::console::pump(ws, tcp).await,
                        Err(e) => eprintln!("VNC connection from {peer}: {e}"),
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
