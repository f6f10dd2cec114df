//! Growing a volume while a VM on this node runs from it: the VM's owner task asks its QEMU to
//! `block_resize` the disk, so the guest sees the new size at once. A volume no VM here has open
//! is grown as a file instead.

use crate::runner::Vms;
use std::path::Path;

/// Grows `path` to `size` bytes through the QEMU that has it open; None when no VM here uses it.
pub async fn grow_if_running(vms: &Vms, path: &Path, size: u64) -> Option<Result<(), String>> {
    let handles: Vec<_> = vms.lock().expect("vms lock").values().cloned().collect();
    for handle in handles {
        if let Some(result) = handle.grow_disk(path, size).await {
            return Some(result);
        }
    }
    None
}
