//! Import throughput against `qemu-img convert` of the same file alone. The disk is raw (2 GiB by
//! default) of 1 MiB chunks, about half random data and half zeroes, and the same disk as qcow2.
//! Each is served by a local HTTP server (this binary again, as a separate process, sending the
//! file with sendfile, as a remote web server would stand apart) and imported into a qcow2
//! volume; it is also imported as an upload stream read straight from the file (the pipeline
//! without the network). The baselines are `qemu-img convert` of the file on disk into a new file
//! of the volume's format, which does the same format work without the network, in each of its
//! output cache modes: by default (`unsafe`: the output is not flushed), `-t writeback` (page
//! cache, flushed at the end, as an import's volume is), `-t none` (`O_DIRECT`, as an import
//! writes) and `-t none -W` (out-of-order writes too: qemu-img's fastest here). For reference,
//! the same GET read from a plain socket into one reused buffer, with nothing done with the
//! bytes, shows what the transport alone costs. Every run starts with no dirty pages (`sync`) and
//! reads its source from the page cache.
//!
//! Prints per case the median of the runs: wall seconds, MiB/s of the disk's virtual size, CPU
//! seconds (this process and the children it waited for, such as qemu-img; not the HTTP
//! server), and each import's throughput relative to each flushed baseline and its CPU relative
//! to `-t none`, paired by round (see [`paired`]).
//!
//! Run: `cargo bench -p vmo-agent --bench import`. VMO_IMPORT_BENCH_MIB (disk size in MiB,
//! default 2048) and VMO_IMPORT_BENCH_RUNS (runs per case, default 5) change it;
//! VMO_IMPORT_BENCH_FORMATS (`raw,qcow2`) and VMO_IMPORT_BENCH_CASES (`convert,http,stream,transfer`)
//! run a part, for profiling one case; VMO_IMPORT_BENCH_VOLUME=raw imports into a raw volume
//! (and the baselines convert into raw).

use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vmo_agent::storage::import::{self, HttpSource, Method, Progress, Target, VolumeFormat};

const MIB: u64 = 1 << 20;
const SERVE_ENV: &str = "VMO_IMPORT_BENCH_SERVE";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The comma-separated words of `name`, or all of `all` when it is not set.
fn selected(name: &str, all: &[&'static str]) -> Vec<&'static str> {
    let Ok(list) = std::env::var(name) else {
        return all.to_vec();
    };
    let chosen: Vec<&'static str> = all
        .iter()
        .copied()
        .filter(|a| list.split(',').any(|w| w.trim() == *a))
        .collect();
    assert!(!chosen.is_empty(), "{name}={list}: choose from {all:?}");
    chosen
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// CPU seconds of this process and of its waited-for children, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // utime, stime, cutime, cstime are fields 14-17 (11-14 after the state).
    let ticks: u64 = fields[11..15].iter().sum();
    ticks as f64 / 100.0
}

/// A raw disk of `mib` MiB: each MiB is random data or zeroes, about half each. The zeroes are
/// written, not holes: an HTTP server sends them either way, and qemu-img would skip holes
/// without reading them (SEEK_DATA), so a sparse file would compare unlike work.
fn make_disk(path: &Path, mib: u64) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(mib * MIB).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut chunk = vec![0u8; MIB as usize];
    for i in 0..mib {
        if next() % 2 == 0 {
            chunk.fill(0);
        } else {
            for word in chunk.chunks_exact_mut(8) {
                word.copy_from_slice(&next().to_le_bytes());
            }
        }
        file.write_all_at(&chunk, i * MIB).unwrap();
    }
    file.sync_all().unwrap();
}

/// The HTTP server process: serves the files of `dir`, prints its port, runs until killed. A
/// thread per connection sends each file with `sendfile`, as a web server does, so the server costs this machine little CPU: it stands in for
/// one elsewhere.
fn serve(dir: PathBuf) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let dir = dir.clone();
        std::thread::spawn(move || serve_connection(stream, &dir));
    }
}

fn serve_connection(mut stream: std::net::TcpStream, dir: &Path) {
    use std::io::Write;
    let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request).unwrap_or(0) == 0 {
            return;
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header.trim().is_empty() {
                break;
            }
            close |= header.trim().eq_ignore_ascii_case("connection: close");
        }
        let name = request.split_whitespace().nth(1).unwrap_or("/");
        let Ok(file) = std::fs::File::open(dir.join(name.trim_start_matches('/'))) else {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            continue;
        };
        let len = file.metadata().unwrap().len();
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nAccept-Ranges: bytes\r\n\r\n");
        if stream.write_all(head.as_bytes()).is_err()
            || send_file(&file, &stream, len).is_err()
            || close
        {
            return;
        }
    }
}

/// Sends `len` bytes of `file` with sendfile(2): the kernel hands the page-cache pages to the
/// socket without copying them through the server (`std::io::copy` reads and sends instead).
fn send_file(file: &std::fs::File, stream: &std::net::TcpStream, len: u64) -> std::io::Result<()> {
    let mut offset = 0u64;
    while offset < len {
        let left = (len - offset).min(1 << 30) as usize;
        match rustix::fs::sendfile(stream, file, Some(&mut offset), left) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The server process, killed when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A run's wall and CPU time.
#[derive(Clone, Copy)]
struct Sample {
    wall: Duration,
    cpu: f64,
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by_key(|s| s.wall);
    let wall = v[v.len() / 2].wall;
    let mut cpus: Vec<f64> = v.iter().map(|s| s.cpu).collect();
    cpus.sort_by(f64::total_cmp);
    Sample {
        wall,
        cpu: cpus[cpus.len() / 2],
    }
}

/// The median over rounds of a case's speed and CPU against the baseline run in the same round:
/// the load of this shared machine drifts within seconds, so each import is compared with the
/// conversion that ran next to it, not with the conversions' median.
fn paired(samples: &[Sample], reference: &[Sample]) -> (f64, f64) {
    let middle = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let pairs = samples.iter().zip(reference);
    (
        middle(
            pairs
                .clone()
                .map(|(s, r)| r.wall.as_secs_f64() / s.wall.as_secs_f64())
                .collect(),
        ),
        middle(pairs.map(|(s, r)| s.cpu / r.cpu).collect()),
    )
}

fn measure(f: impl FnOnce()) -> Sample {
    let (start, cpu) = (Instant::now(), cpu_seconds());
    f();
    Sample {
        wall: start.elapsed(),
        cpu: cpu_seconds() - cpu,
    }
}

fn main() {
    if let Ok(dir) = std::env::var(SERVE_ENV) {
        serve(PathBuf::from(dir));
        return;
    }
    let mib = env_or("VMO_IMPORT_BENCH_MIB", 2048);
    let runs = env_or("VMO_IMPORT_BENCH_RUNS", 5).max(1);
    let work = tempfile::Builder::new()
        .prefix("vmo-import-bench-")
        .tempdir()
        .unwrap();
    let src = work.path().join("src");
    let pool = work.path().join("pool");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&pool).unwrap();
    let raw = src.join("disk.raw");
    let qcow2 = src.join("disk.qcow2");
    eprintln!("making a {mib} MiB disk in {}", work.path().display());
    make_disk(&raw, mib);
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(SERVE_ENV, &src)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _server = Server(child);
    let base = format!("http://127.0.0.1:{}", port.trim());

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let out = pool.join("disk");
    let volume_name = selected("VMO_IMPORT_BENCH_VOLUME", &["qcow2", "raw"])[0];
    let volume = match volume_name {
        "raw" => VolumeFormat::Raw,
        _ => VolumeFormat::Qcow2,
    };
    // Each run starts with no dirty pages to write back, or whoever runs after a big write is
    // throttled to the disk's speed.
    let settle = || {
        let _ = std::fs::remove_file(&out);
        run(&mut Command::new("sync"));
    };
    let baseline = |input: &Path, format: &str, cache: &[&str]| {
        settle();
        let mut cmd = Command::new("qemu-img");
        cmd.arg("convert").args(cache);
        cmd.args(["-f", format, "-O", volume.as_str()])
            .arg(input)
            .arg(&out);
        measure(|| run(&mut cmd))
    };
    // Over HTTP, or as an upload stream read straight from the file; in a task of the runtime's,
    // as the agent runs an import.
    let import = |name: &str, expect: Method, http: bool| {
        settle();
        let target = Target {
            path: out.clone(),
            format: volume,
            capacity: mib * MIB,
        };
        let (url, file) = (format!("{base}/{name}"), src.join(name));
        measure(|| {
            let got = rt
                .block_on(rt.spawn(async move {
                    if http {
                        let src = HttpSource {
                            url,
                            ..Default::default()
                        };
                        import::import_http(&src, &target, Progress::none()).await
                    } else {
                        let file = tokio::fs::File::open(file).await.unwrap();
                        let len = file.metadata().await.unwrap().len();
                        import::import_stream(file, Some(len), &target, None, Progress::none())
                            .await
                    }
                }))
                .unwrap()
                .unwrap_or_else(|e| panic!("importing {name}: {e}"));
            assert_eq!(got.method, expect, "{name}");
        })
    };
    // The transport alone: the same GET on a plain blocking socket, read into one reused 2 MiB
    // buffer as the import reads a plain-HTTP body (whole reads, `MSG_WAITALL`; head and body
    // alike, nothing parsed), and dropped.
    let transfer = |name: &str| {
        settle();
        measure(|| {
            use std::io::Write;
            let mut tcp = std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
            let request =
                format!("GET /{name} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
            tcp.write_all(request.as_bytes()).unwrap();
            let mut buf = vec![0u8; 2 << 20];
            while rustix::net::recv(&tcp, &mut buf[..], rustix::net::RecvFlags::WAITALL)
                .unwrap()
                .0
                > 0
            {}
        })
    };

    println!(
        "import of a {mib} MiB disk (about half data) into a {} volume, median of {runs} runs",
        volume_name
    );
    println!(
        "{:<58} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>8}",
        "case", "seconds", "MiB/s", "CPU s", "speed/wb", "speed/dio", "speed/-W", "CPU/dio"
    );
    let rate = |s: Sample| mib as f64 / s.wall.as_secs_f64();
    let formats = selected("VMO_IMPORT_BENCH_FORMATS", &["raw", "qcow2"]);
    let cases = selected(
        "VMO_IMPORT_BENCH_CASES",
        &["convert", "http", "stream", "transfer"],
    );
    let chosen = |case: &str| cases.contains(&case);
    // qemu-img's output cache modes: the default, then the flushed ones the imports are set
    // against (the last three columns, in this order).
    let modes: [&[&str]; 4] = [
        &[],
        &["-t", "writeback"],
        &["-t", "none"],
        &["-t", "none", "-W"],
    ];
    for (name, format, input, method) in [
        ("disk.raw", "raw", &raw, Method::Streamed),
        (
            "disk.qcow2",
            "qcow2",
            &qcow2,
            if volume == VolumeFormat::Qcow2 {
                Method::AsIs
            } else {
                Method::Converted
            },
        ),
    ] {
        if !formats.contains(&format) {
            continue;
        }
        let mut baselines: Vec<Vec<Sample>> = vec![Vec::new(); modes.len()];
        let (mut http, mut stream, mut transfers) = (Vec::new(), Vec::new(), Vec::new());
        let mut imports = || {
            if chosen("http") {
                http.push(import(name, method, true));
            }
            if chosen("stream") {
                stream.push(import(name, method, false));
            }
        };
        // Every other run the imports go first, so neither side always follows the same one.
        for r in 0..runs {
            if chosen("transfer") {
                transfers.push(transfer(name));
            }
            if r % 2 == 1 {
                imports();
            }
            if chosen("convert") {
                for (samples, cache) in baselines.iter_mut().zip(modes) {
                    samples.push(baseline(input, format, cache));
                }
            }
            if r % 2 == 0 {
                imports();
            }
        }
        if chosen("http") || chosen("stream") {
            // The last import's volume holds the disk.
            run(Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", volume.as_str()])
                .arg(&raw)
                .arg(&out));
        }
        // The flushed modes the imports are set against; CPU against `-t none`, as imports write.
        let references = baselines[1..].to_vec();
        let direct = &references[1];
        let convert = |cache: &[&str]| {
            let mode = if cache.is_empty() {
                " (default: unsafe, not flushed)".to_string()
            } else {
                String::new()
            };
            let cache = cache.iter().map(|a| format!(" {a}")).collect::<String>();
            format!("qemu-img convert{cache} -f {format} -O {volume_name}{mode}")
        };
        let mut rows: Vec<(String, Vec<Sample>, bool)> = modes
            .iter()
            .zip(baselines)
            .map(|(cache, samples)| (convert(cache), samples, false))
            .collect();
        rows.extend([
            (
                format!("import over HTTP: {format} ({method:?})"),
                http,
                true,
            ),
            (
                format!("import of a local stream: {format} ({method:?})"),
                stream,
                true,
            ),
            (
                format!("HTTP transfer alone (socket read): {format}"),
                transfers,
                true,
            ),
        ]);
        for (case, samples, relative) in rows {
            if samples.is_empty() {
                continue;
            }
            let m = median(samples.clone());
            let mut line = format!(
                "{case:<58} {:>7.2} {:>6.0} {:>6.2}",
                m.wall.as_secs_f64(),
                rate(m),
                m.cpu
            );
            if relative {
                for reference in references.iter().filter(|r| r.len() == samples.len()) {
                    line.push_str(&format!(" {:>8.2}x", paired(&samples, reference).0));
                }
                if direct.len() == samples.len() {
                    line.push_str(&format!(" {:>7.2}x", paired(&samples, direct).1));
                }
            }
            println!("{line}");
        }
    }
}
