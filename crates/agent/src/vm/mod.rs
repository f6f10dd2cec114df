//! Running VMs: launch plans, disk preparation, and QEMU processes.

pub mod disks;
pub mod migrate;
pub mod nic_hotplug;
pub mod plan;
pub mod process;
