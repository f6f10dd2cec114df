//! A qcow2 volume written in one pass while a raw disk streams in: data clusters are appended in
//! the order they arrive, the tables that map them are kept in memory and written after the data,
//! and the header that makes the file a qcow2 image goes last. Clusters that are all zeroes are
//! never allocated, so they read as zeroes (the image has no backing file).
//!
//! Why not qemu-storage-daemon behind an NBD export, as before: every byte then crossed a unix
//! socket twice more and a second process, which cost the import about 0.3 s of wall time per
//! GiB on the machines measured (docs/benchmarks.md, "Image import throughput"). Writing the
//! clusters from the import's own buffer, with `O_DIRECT`, costs what a raw volume costs.
//!
//! The layout follows QEMU's qcow2 specification: version 3, 64 KiB clusters, 16-bit
//! refcounts, no extensions, no snapshots. Every cluster is used exactly once, so every refcount
//! is 1 and every table entry carries the COPIED flag. The finished image is checked with
//! `qemu-img check` before it becomes the volume (see `finish::streamed`).

use std::collections::BTreeMap;

/// Bytes per cluster.
pub(crate) const CLUSTER: u64 = 64 << 10;
/// Entries in an L2 table (one cluster of 8-byte entries).
const L2_ENTRIES: u64 = CLUSTER / 8;
/// Refcounts in a refcount block (one cluster of 16-bit entries).
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER / 2;
/// In L1 and L2 entries: the cluster's refcount is exactly 1.
const COPIED: u64 = 1 << 63;
const SECTOR: u64 = 512;
const MAGIC: u32 = 0x5146_49fb;
const HEADER_LENGTH: u32 = 104;

/// The clusters of an image being written, and where its tables will go.
#[derive(Debug)]
pub(crate) struct Layout {
    capacity: u64,
    /// The next free cluster of the file (cluster 0 holds the header).
    next: u64,
    /// L2 tables in use, by their index in the L1 table.
    tables: BTreeMap<u64, Vec<u64>>,
}

/// A guest range allocated twice: the caller's mistake, reported rather than written.
#[derive(Debug, thiserror::Error)]
#[error("the qcow2 cluster at guest offset {0} was already written")]
pub(crate) struct AlreadyAllocated(u64);

impl Layout {
    /// An image of `capacity` bytes, all unallocated. Its virtual size is rounded up to whole
    /// 512-byte sectors, as `qemu-img create` does (QEMU would round it down).
    pub(crate) fn new(capacity: u64) -> Self {
        Self {
            capacity: capacity.next_multiple_of(SECTOR),
            next: 1,
            tables: BTreeMap::new(),
        }
    }

    /// Allocates the clusters for `len` bytes of data at guest offset `offset` (a cluster
    /// boundary) as one contiguous run of the file, and returns the run's file offset.
    pub(crate) fn allocate(&mut self, offset: u64, len: u64) -> Result<u64, AlreadyAllocated> {
        assert!(
            offset.is_multiple_of(CLUSTER)
                && offset + len <= self.capacity.next_multiple_of(CLUSTER),
            "allocating {len} bytes at {offset} in a {} byte image",
            self.capacity
        );
        let first = offset / CLUSTER;
        let count = len.div_ceil(CLUSTER);
        let (start, host) = (self.next, self.next * CLUSTER);
        for (i, cluster) in (first..first + count).enumerate() {
            let table = self
                .tables
                .entry(cluster / L2_ENTRIES)
                .or_insert_with(|| vec![0; L2_ENTRIES as usize]);
            let entry = &mut table[(cluster % L2_ENTRIES) as usize];
            if *entry != 0 {
                return Err(AlreadyAllocated(cluster * CLUSTER));
            }
            *entry = ((start + i as u64) * CLUSTER) | COPIED;
        }
        self.next += count;
        Ok(host)
    }

    /// The metadata that completes the image, as `(file offset, bytes)` writes after the data:
    /// the L2 tables, the L1 table, the refcount table and blocks, and the header (last).
    pub(crate) fn finish(&self) -> Vec<(u64, Vec<u8>)> {
        let mut writes = Vec::new();
        let mut cursor = self.next;
        let l1_entries = self.capacity.div_ceil(CLUSTER * L2_ENTRIES);
        let mut l1 = vec![0u64; l1_entries as usize];
        for (index, table) in &self.tables {
            l1[*index as usize] = (cursor * CLUSTER) | COPIED;
            writes.push((cursor * CLUSTER, be_u64s(table)));
            cursor += 1;
        }
        let l1_offset = cursor * CLUSTER;
        writes.push((l1_offset, be_u64s(&l1)));
        cursor += (l1_entries * 8).div_ceil(CLUSTER).max(1);

        // The refcount structures count themselves: find the smallest sizes that cover every
        // cluster of the file, them included.
        let (mut table_clusters, mut blocks) = (1u64, 0u64);
        loop {
            let total = cursor + table_clusters + blocks;
            let need_blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
            let need_table = (need_blocks * 8).div_ceil(CLUSTER).max(1);
            if (need_blocks, need_table) == (blocks, table_clusters) {
                break;
            }
            (blocks, table_clusters) = (need_blocks, need_table);
        }
        let table_offset = cursor * CLUSTER;
        let first_block = cursor + table_clusters;
        let block_offsets: Vec<u64> = (0..blocks).map(|b| (first_block + b) * CLUSTER).collect();
        writes.push((table_offset, be_u64s(&block_offsets)));
        let total = first_block + blocks;
        for (b, offset) in block_offsets.iter().enumerate() {
            let counted = (total - b as u64 * REFCOUNTS_PER_BLOCK).min(REFCOUNTS_PER_BLOCK);
            writes.push((*offset, [0u8, 1].repeat(counted as usize)));
        }
        writes.push((
            0,
            self.header(l1_entries, l1_offset, table_offset, table_clusters),
        ));
        writes
    }

    fn header(
        &self,
        l1_entries: u64,
        l1_offset: u64,
        table_offset: u64,
        table_clusters: u64,
    ) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LENGTH as usize + 8);
        h.extend_from_slice(&MAGIC.to_be_bytes());
        h.extend_from_slice(&3u32.to_be_bytes()); // version
        h.extend_from_slice(&0u64.to_be_bytes()); // backing file offset
        h.extend_from_slice(&0u32.to_be_bytes()); // backing file name length
        h.extend_from_slice(&CLUSTER.trailing_zeros().to_be_bytes()); // cluster bits
        h.extend_from_slice(&self.capacity.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // no encryption
        h.extend_from_slice(&(l1_entries as u32).to_be_bytes());
        h.extend_from_slice(&l1_offset.to_be_bytes());
        h.extend_from_slice(&table_offset.to_be_bytes());
        h.extend_from_slice(&(table_clusters as u32).to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes()); // snapshots
        h.extend_from_slice(&0u64.to_be_bytes()); // snapshot table offset
        h.extend_from_slice(&[0u8; 24]); // incompatible, compatible, autoclear features
        h.extend_from_slice(&4u32.to_be_bytes()); // refcount order: 16 bits
        h.extend_from_slice(&HEADER_LENGTH.to_be_bytes());
        debug_assert_eq!(h.len(), HEADER_LENGTH as usize);
        h.extend_from_slice(&[0u8; 8]); // end of header extensions
        h
    }
}

fn be_u64s(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_be_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_are_appended_and_mapped() {
        let mut layout = Layout::new(3 * CLUSTER * L2_ENTRIES + 1000);
        assert_eq!(layout.allocate(0, 100).unwrap(), CLUSTER);
        assert_eq!(
            layout.allocate(5 * CLUSTER, 3 * CLUSTER).unwrap(),
            2 * CLUSTER
        );
        let far = 3 * CLUSTER * L2_ENTRIES;
        assert_eq!(layout.allocate(far, 1000).unwrap(), 5 * CLUSTER);
        assert!(layout.allocate(6 * CLUSTER, CLUSTER).is_err());
        assert_eq!(layout.tables.len(), 2);
        assert_eq!(layout.tables[&0][5], (2 * CLUSTER) | COPIED);
        assert_eq!(layout.tables[&3][0], (5 * CLUSTER) | COPIED);
        let writes = layout.finish();
        // Two L2 tables, the L1 table, the refcount table and one block, then the header.
        let offsets: Vec<u64> = writes.iter().map(|w| w.0 / CLUSTER).collect();
        assert_eq!(offsets, vec![6, 7, 8, 9, 10, 0]);
        assert_eq!(&writes[2].1[..8], &((6 * CLUSTER) | COPIED).to_be_bytes());
        assert_eq!(
            &writes[2].1[24..32],
            &((7 * CLUSTER) | COPIED).to_be_bytes()
        );
        assert_eq!(writes[4].1.len(), 11 * 2, "11 clusters counted");
        assert_eq!(&writes[5].1[..4], b"QFI\xfb");
    }

    /// An image QEMU reads as written: `qemu-img check` finds no error or leak, and
    /// `qemu-img map` shows the data where it was allocated. Several L2 tables, two refcount
    /// blocks and a size that is not a whole number of clusters; the data is left as holes.
    #[test]
    fn qemu_img_reads_the_layout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.qcow2");
        let capacity = 5 * (1 << 30) + 12345;
        let mut layout = Layout::new(capacity);
        let runs = [
            (0, 3 * CLUSTER),
            (700 << 20, 40_000 * CLUSTER),
            (capacity / CLUSTER * CLUSTER, capacity % CLUSTER),
        ];
        let hosts: Vec<u64> = runs
            .iter()
            .map(|(offset, len)| layout.allocate(*offset, *len).unwrap())
            .collect();
        let file = std::fs::File::create(&path).unwrap();
        for (offset, bytes) in layout.finish() {
            std::os::unix::fs::FileExt::write_all_at(&file, &bytes, offset).unwrap();
        }
        drop(file);
        let qemu_img = |args: &[&str]| -> serde_json::Value {
            let out = std::process::Command::new("qemu-img")
                .args(args)
                .args(["--output=json", "-f", "qcow2"])
                .arg(&path)
                .output()
                .expect("qemu-img runs");
            serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
                panic!(
                    "qemu-img {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
        };
        let check = qemu_img(&["check"]);
        assert_eq!(check["check-errors"], 0, "{check}");
        assert!(
            check.get("corruptions").is_none() && check.get("leaks").is_none(),
            "{check}"
        );
        assert_eq!(
            check["image-end-offset"].as_u64().unwrap() % CLUSTER,
            0,
            "{check}"
        );
        let map = qemu_img(&["map"]);
        let data: Vec<(u64, u64, u64)> = map
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["data"] == true)
            .map(|e| {
                let n = |k: &str| e[k].as_u64().unwrap();
                (n("start"), n("length"), n("offset"))
            })
            .collect();
        let expected: Vec<(u64, u64, u64)> = runs
            .iter()
            .zip(&hosts)
            .map(|((offset, len), host)| (*offset, len.next_multiple_of(SECTOR), *host))
            .collect();
        assert_eq!(data, expected);
    }

    #[test]
    fn refcount_blocks_cover_themselves() {
        let mut layout = Layout::new(1 << 40);
        // Just below one block's reach; the tables push the file past it.
        layout
            .allocate(0, (REFCOUNTS_PER_BLOCK - 3) * CLUSTER)
            .unwrap();
        let writes = layout.finish();
        let refcount_table = &writes[writes.len() - 4];
        assert_eq!(refcount_table.1.len(), 2 * 8, "two refcount blocks");
        let (first, second) = (&writes[writes.len() - 3], &writes[writes.len() - 2]);
        let total = second.0 / CLUSTER + 1;
        assert_eq!(first.1.len() as u64 / 2, REFCOUNTS_PER_BLOCK);
        assert_eq!(second.1.len() as u64 / 2, total - REFCOUNTS_PER_BLOCK);
    }
}
