//! A plain HTTP/1.1 file server for tests that import images: serves the files of one directory
//! (GET and HEAD, `Content-Length`, 404 for anything else) on 127.0.0.1, until dropped. Small on
//! purpose: the import code under test is the client, and this stands in for any web server.

use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A running file server.
#[derive(Debug)]
pub struct FileServer {
    pub base_url: String,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    /// Serves `dir` on a free port.
    pub async fn start(dir: &Path) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let dir = dir.to_path_buf();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, dir.clone()));
            }
        });
        Self { base_url, task }
    }

    /// The URL of a file in the directory.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base_url)
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(stream: tokio::net::TcpStream, dir: PathBuf) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut request = String::new();
    if lines.read_line(&mut request).await.is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match lines.read_line(&mut header).await {
            Ok(0) | Err(_) => return,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let mut parts = request.split_whitespace();
    let method = parts.next().unwrap_or("");
    let name = parts.next().unwrap_or("/").trim_start_matches('/');
    let file = (!name.contains("..") && !name.is_empty()).then(|| dir.join(name));
    let Some(Ok(mut f)) = (match &file {
        Some(p) => Some(tokio::fs::File::open(p).await),
        None => None,
    }) else {
        let _ = write
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    };
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    );
    if write.write_all(head.as_bytes()).await.is_err() || method == "HEAD" {
        return;
    }
    let _ = tokio::io::copy(&mut f, &mut write).await;
    let _ = write.shutdown().await;
}
