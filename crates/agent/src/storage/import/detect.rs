//! What a stream holds, from its first bytes: compression (gzip, xz) and image format. The import
//! chooses its path by this (raw streams are written while they arrive, other formats need a
//! file qemu-img can seek in), and never lets qemu-img probe a format itself: probing an
//! untrusted raw image can be fooled into reading host files.

/// Bytes of the (decompressed) stream the format detection looks at.
pub(crate) const HEAD_LEN: usize = 64 << 10;

/// A compression wrapper around the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    Gzip,
    Xz,
}

impl Compression {
    /// The name reported in [`Imported`](super::Imported).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Xz => "xz",
        }
    }
    /// The decompressor run as a child process.
    pub(crate) fn program(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
        }
    }
}

/// The compression of a stream starting with `head` (at least 6 bytes, unless shorter).
pub(crate) fn compression(head: &[u8]) -> Option<Compression> {
    if head.starts_with(&[0x1f, 0x8b]) {
        Some(Compression::Gzip)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Some(Compression::Xz)
    } else {
        None
    }
}

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Raw,
    Qcow2,
    /// QEMU's old qcow (version 1).
    Qcow,
    Vmdk,
    /// Dynamic VHD; a fixed VHD is raw data with a footer and goes the raw way.
    Vhd,
    Vhdx,
    Vdi,
}

impl Format {
    /// The name reported in [`Imported`](super::Imported).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Qcow => "qcow",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
        }
    }
    /// qemu-img's driver name.
    pub(crate) fn driver(self) -> &'static str {
        match self {
            Format::Vhd => "vpc",
            other => other.name(),
        }
    }
    /// True for formats that can name a backing file, which an import must never follow.
    pub(crate) fn has_backing(self) -> bool {
        matches!(self, Format::Qcow2 | Format::Qcow | Format::Vmdk)
    }
}

/// The format of an image starting with `head` ([`HEAD_LEN`] bytes, or all of a shorter
/// image), or why it cannot be imported.
pub(crate) fn format(head: &[u8]) -> Result<Format, String> {
    if head.starts_with(b"QFI\xfb") {
        return Ok(match be32(head, 4) {
            Some(1) => Format::Qcow,
            _ => Format::Qcow2,
        });
    }
    if head.starts_with(b"KDMV") {
        return Ok(Format::Vmdk);
    }
    if head.starts_with(b"COWD") {
        return Err("a VMware ESX 'COWD' sparse extent (VMFS snapshot), which needs its \
                    descriptor and parent; export the disk as a streamOptimized or monolithicSparse VMDK"
            .into());
    }
    if head.starts_with(b"# Disk DescriptorFile") {
        return Err(
            "a VMDK descriptor without its data: its extents are separate files. \
                    Import the disk as one file instead (a streamOptimized or monolithicSparse \
                    VMDK, or the -flat.vmdk data file as raw)"
                .into(),
        );
    }
    if head.starts_with(b"vhdxfile") {
        return Ok(Format::Vhdx);
    }
    if head.starts_with(b"conectix") {
        return Ok(Format::Vhd);
    }
    if le32(head, 0x40) == Some(0xbeda_107f) {
        return Ok(Format::Vdi);
    }
    if head.get(257..262) == Some(b"ustar") {
        return Err(
            "a tar archive (an OVA?); import an OVA with `vmo import ova`, or the \
                    disk image inside it"
                .into(),
        );
    }
    Ok(Format::Raw)
}

/// The virtual size a header declares, where the header is in the first bytes; used to refuse
/// an image too large for its volume before downloading it. qemu-img's answer is checked later
/// in any case.
pub(crate) fn header_virtual_size(format: Format, head: &[u8]) -> Option<u64> {
    match format {
        Format::Qcow2 | Format::Qcow => be64(head, 24),
        Format::Vmdk => le64(head, 12).map(|sectors| sectors.saturating_mul(512)),
        Format::Vhd => be64(head, 0x30),
        Format::Vdi => le64(head, 0x170),
        Format::Raw | Format::Vhdx => None,
    }
}

/// True when `tail` (the last 512 bytes of a raw stream of `data_len` bytes before it) is the
/// footer of a fixed VHD describing exactly those bytes: then the disk is the data before it.
pub(crate) fn is_fixed_vhd_footer(tail: &[u8], data_len: u64) -> bool {
    if tail.len() != 512 || !tail.starts_with(b"conectix") {
        return false;
    }
    // Disk type 2 is fixed; the checksum is the one's complement of the byte sum without it.
    let disk_type = be32(tail, 0x3c);
    let current_size = be64(tail, 0x30);
    let checksum = be32(tail, 0x40);
    let sum = tail
        .iter()
        .enumerate()
        .filter(|(i, _)| !(0x40..0x44).contains(i))
        .fold(0u32, |s, (_, b)| s.wrapping_add(u32::from(*b)));
    disk_type == Some(2) && current_size == Some(data_len) && checksum == Some(!sum)
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_by_magic() {
        assert_eq!(compression(&[0x1f, 0x8b, 8, 0]), Some(Compression::Gzip));
        assert_eq!(
            compression(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0]),
            Some(Compression::Xz)
        );
        assert_eq!(compression(b"QFI\xfb"), None);
        assert_eq!(compression(&[]), None);
    }

    #[test]
    fn formats_by_magic() {
        let mut qcow2 = b"QFI\xfb\0\0\0\x03".to_vec();
        qcow2.extend_from_slice(&[0; 16]);
        qcow2.extend_from_slice(&(10u64 << 30).to_be_bytes());
        assert_eq!(format(&qcow2), Ok(Format::Qcow2));
        assert_eq!(header_virtual_size(Format::Qcow2, &qcow2), Some(10 << 30));
        assert_eq!(format(b"QFI\xfb\0\0\0\x01"), Ok(Format::Qcow));
        assert_eq!(format(b"KDMV\x01\0\0\0"), Ok(Format::Vmdk));
        assert_eq!(format(b"vhdxfile"), Ok(Format::Vhdx));
        assert_eq!(format(b"conectix\0\0"), Ok(Format::Vhd));
        let mut vdi = vec![0u8; 0x200];
        vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        vdi[0x170..0x178].copy_from_slice(&(1u64 << 30).to_le_bytes());
        assert_eq!(format(&vdi), Ok(Format::Vdi));
        assert_eq!(header_virtual_size(Format::Vdi, &vdi), Some(1 << 30));
        assert_eq!(format(&[0u8; 4096]), Ok(Format::Raw));
        assert_eq!(format(b""), Ok(Format::Raw));
        assert!(format(b"# Disk DescriptorFile\nversion=1")
            .unwrap_err()
            .contains("extents"));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert!(format(&tar).unwrap_err().contains("OVA"));
    }

    #[test]
    fn fixed_vhd_footer_needs_type_size_and_checksum() {
        let mut footer = vec![0u8; 512];
        footer[..8].copy_from_slice(b"conectix");
        footer[0x30..0x38].copy_from_slice(&4096u64.to_be_bytes());
        footer[0x3c..0x40].copy_from_slice(&2u32.to_be_bytes());
        let sum = footer
            .iter()
            .fold(0u32, |s, b| s.wrapping_add(u32::from(*b)));
        footer[0x40..0x44].copy_from_slice(&(!sum).to_be_bytes());
        assert!(is_fixed_vhd_footer(&footer, 4096));
        assert!(!is_fixed_vhd_footer(&footer, 8192));
        footer[0x50] = 1;
        assert!(!is_fixed_vhd_footer(&footer, 4096));
    }
}
