//! gmem-vmm: a minimal KVM VMM whose guest RAM comes from gmemd.
fn main() {}
