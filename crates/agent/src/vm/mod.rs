//! Running VMs: launch plans, disk preparation, and QEMU processes.

pub mod plan;
