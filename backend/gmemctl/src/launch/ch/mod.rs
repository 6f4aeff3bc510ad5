//! cloud-hypervisor on gmemd memory: its command line and RAM layout
//! ([`command`]) and its REST API ([`api`]); its live replacement by local
//! migration is part of `gmemctl upgrade` (`crate::launch::upgrade`).
//!
//! cloud-hypervisor maps main RAM as one shared memory zone whose file is
//! the inherited memory fd (`file=/proc/self/fd/201`); the lease socket is
//! inherited at the same number as in QEMU. It has no way to hot-plug a
//! given file: its ACPI and virtio-mem hotplug allocate memory itself.

pub mod api;
pub mod command;
