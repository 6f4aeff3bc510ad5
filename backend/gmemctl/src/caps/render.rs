//! `gmemctl caps` as a two-column table for people.

use std::fmt::Write as _;

use gmemd::size::format_size;

use super::{Bitmask, GmemAttempt, HostCaps, Probed, PROBE_GMEM_SIZE};

fn fmt_probed<T>(p: &Probed<T>, f: impl FnOnce(&T) -> String) -> String {
    match (&p.value, &p.error) {
        (Some(v), _) => f(v),
        (None, Some(e)) => format!("error: {e}"),
        (None, None) => "unknown".to_string(),
    }
}

fn fmt_attempts(out: &mut String, indent: &str, attempts: &[GmemAttempt]) {
    if attempts.is_empty() {
        let _ = writeln!(out, "{indent}(not tried)");
    }
    for a in attempts {
        let names = if a.flags.names.is_empty() {
            "0".to_string()
        } else {
            a.flags.names.join("|")
        };
        let mut line = format!("{indent}flags {names:<16} ");
        line.push_str(if a.created { "created" } else { "FAILED" });
        match a.host_mmap {
            Some(true) => line.push_str(", host mmap ok"),
            Some(false) => line.push_str(", host mmap FAILED"),
            None => {}
        }
        if let Some(e) = &a.error {
            let _ = write!(line, " ({e})");
        }
        let _ = writeln!(out, "{line}");
    }
}

impl HostCaps {
    /// Renders the capabilities as a human-readable two-column table.
    pub fn render_table(&self) -> String {
        let yes_no = |b: &bool| if *b { "yes" } else { "no" }.to_string();
        let mut out = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "{k:<26} {v}");
        };
        row("kvm", yes_no(&self.kvm));
        row(
            "kvm_api_version",
            fmt_probed(&self.kvm_api_version, ToString::to_string),
        );
        row("user_memory2", fmt_probed(&self.user_memory2, yes_no));
        row("guest_memfd", fmt_probed(&self.guest_memfd, yes_no));
        row(
            "guest_memfd_flags",
            fmt_probed(&self.guest_memfd_flags, Bitmask::display),
        );
        row("vm_types", fmt_probed(&self.vm_types, Bitmask::display));
        row(
            "memory_attributes",
            fmt_probed(&self.memory_attributes, Bitmask::display),
        );
        row(
            "memfd_secret",
            if self.memfd_secret.available {
                "yes".to_string()
            } else {
                format!(
                    "no ({})",
                    self.memfd_secret.error.as_deref().unwrap_or("unknown")
                )
            },
        );
        row(
            "hugepages",
            fmt_probed(&self.hugepages, |pools| {
                if pools.is_empty() {
                    return "none".to_string();
                }
                pools
                    .iter()
                    .map(|p| {
                        format!(
                            "{}: {} total, {} free",
                            format_size(p.page_size),
                            p.total,
                            p.free
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            }),
        );
        let _ = writeln!(
            out,
            "guest_memfd create ({}, default VM):",
            format_size(PROBE_GMEM_SIZE)
        );
        fmt_attempts(&mut out, "  ", &self.guest_memfd_create);
        for p in &self.vm_type_probes {
            let _ = writeln!(out, "vm type {} ({}):", p.vm_type, p.name);
            if let Some(e) = &p.create.error {
                let _ = writeln!(out, "  create                   error: {e}");
                continue;
            }
            let _ = writeln!(
                out,
                "  guest_memfd_flags        {}",
                fmt_probed(&p.guest_memfd_flags, Bitmask::display)
            );
            let _ = writeln!(
                out,
                "  memory_attributes        {}",
                fmt_probed(&p.memory_attributes, Bitmask::display)
            );
            let _ = writeln!(out, "  guest_memfd create:");
            fmt_attempts(&mut out, "    ", &p.guest_memfd_create);
        }
        out
    }
}
