//! The members of a tar archive (an OVA is one), found by reading its headers in order and
//! skipping over each member's data, so a disk inside can be streamed straight from the archive
//! at its offset. ustar, GNU long names (`L`) and pax `path`/`size` records are understood.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// One file in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// Where its data starts in the archive.
    pub start: u64,
    pub len: u64,
}

/// Why an archive cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("reading {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path} is not an OVA (a tar archive): {why}")]
    NotTar { path: String, why: String },
    #[error("{path} is damaged: {why}")]
    Damaged { path: String, why: String },
}

fn octal(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        // GNU base-256 for large sizes.
        let mut v: u64 = (field[0] & 0x7f) as u64;
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(*b as u64)?;
        }
        return Some(v);
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

fn checksum_ok(header: &[u8; 512]) -> bool {
    let Some(stored) = octal(&header[148..156]) else {
        return false;
    };
    let sum: u64 = header
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                *b as u64
            }
        })
        .sum();
    sum == stored
}

/// `path` and `size` from pax extended header records (`LEN key=value\n`).
fn pax(data: &[u8]) -> (Option<String>, Option<u64>) {
    let (mut path, mut size) = (None, None);
    let text = String::from_utf8_lossy(data);
    for record in text.split('\n') {
        let Some((_, kv)) = record.split_once(' ') else {
            continue;
        };
        match kv.split_once('=') {
            Some(("path", v)) => path = Some(v.to_string()),
            Some(("size", v)) => size = v.parse().ok(),
            _ => {}
        }
    }
    (path, size)
}

/// Lists the regular files of the archive at `path`.
pub fn members(path: &Path) -> Result<Vec<Member>, TarError> {
    let shown = path.display().to_string();
    let io = |error| TarError::Io {
        path: shown.clone(),
        error,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let mut members = Vec::new();
    let mut pos = 0u64;
    let (mut long_name, mut pax_path, mut pax_size) = (None::<String>, None::<String>, None::<u64>);
    loop {
        if pos + 512 > total {
            if members.is_empty() {
                return Err(TarError::NotTar {
                    path: shown,
                    why: "it is too short to hold a tar header".into(),
                });
            }
            // Archives sometimes end without the two zero blocks.
            return Ok(members);
        }
        file.seek(SeekFrom::Start(pos)).map_err(io)?;
        let mut header = [0u8; 512];
        file.read_exact(&mut header).map_err(io)?;
        if header.iter().all(|b| *b == 0) {
            if members.is_empty() && pos == 0 {
                return Err(TarError::NotTar {
                    path: shown,
                    why: "it starts with an empty block".into(),
                });
            }
            return Ok(members);
        }
        if !checksum_ok(&header) {
            return Err(if pos == 0 {
                TarError::NotTar {
                    path: shown,
                    why: "its first block is not a tar header".into(),
                }
            } else {
                TarError::Damaged {
                    path: shown,
                    why: format!("the tar header at byte {pos} has a wrong checksum"),
                }
            });
        }
        let size = match pax_size.take() {
            Some(s) => s,
            None => octal(&header[124..136]).ok_or_else(|| TarError::Damaged {
                path: shown.clone(),
                why: format!("the tar header at byte {pos} has an unreadable size"),
            })?,
        };
        let start = pos + 512;
        if start + size > total {
            return Err(TarError::Damaged {
                path: shown,
                why: format!(
                    "it is truncated: a member of {size} bytes at byte {start} goes past its end ({total} bytes)"
                ),
            });
        }
        let kind = header[156];
        let read_data = |file: &mut std::fs::File| -> Result<Vec<u8>, TarError> {
            let mut data = vec![0u8; size.min(1 << 20) as usize];
            file.read_exact(&mut data).map_err(io)?;
            Ok(data)
        };
        match kind {
            b'L' => long_name = Some(text(&read_data(&mut file)?)),
            b'x' => {
                let (p, s) = pax(&read_data(&mut file)?);
                pax_path = p;
                pax_size = s;
            }
            b'0' | 0 | b'7' => {
                let name = long_name.take().or(pax_path.take()).unwrap_or_else(|| {
                    let prefix = text(&header[345..500]);
                    let name = text(&header[0..100]);
                    if prefix.is_empty() {
                        name
                    } else {
                        format!("{prefix}/{name}")
                    }
                });
                members.push(Member {
                    name: name.trim_start_matches("./").to_string(),
                    start,
                    len: size,
                });
            }
            _ => {
                long_name = None;
                pax_path = None;
            }
        }
        pos = start + size.div_ceil(512) * 512;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn lists_members_with_their_offsets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.ovf"), b"<Envelope/>").unwrap();
        let long = "x".repeat(120) + ".vmdk";
        std::fs::write(dir.path().join(&long), vec![7u8; 1000]).unwrap();
        let ova = dir.path().join("t.ova");
        let ok = Command::new("tar")
            .arg("-cf")
            .arg(&ova)
            .arg("-C")
            .arg(dir.path())
            .args(["a.ovf", &long])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let m = members(&ova).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].name.as_str(), m[0].len), ("a.ovf", 11));
        assert_eq!((m[1].name.as_str(), m[1].len), (long.as_str(), 1000));
        let bytes = std::fs::read(&ova).unwrap();
        let s = m[1].start as usize;
        assert!(bytes[s..s + 1000].iter().all(|b| *b == 7));

        let not = dir.path().join("not.ova");
        std::fs::write(&not, vec![1u8; 4096]).unwrap();
        let e = members(&not).unwrap_err().to_string();
        assert!(e.contains("is not an OVA"), "{e}");
    }
}
