//! Guest-physical layout of main RAM per QEMU x86 machine type: which range
//! of the memory file QEMU maps at which guest-physical address, so
//! `gmemctl launch` can record the bindings QEMU will use.
//!
//! Both PC machines split RAM into `ram-below-4g` (file offset 0 at gpa 0)
//! and `ram-above-4g` (the rest, at gpa 4 GiB). Where they split, from
//! QEMU 10's `hw/i386/pc_q35.c` (`pc_q35_init`) and `hw/i386/pc_piix.c`
//! (`pc_init1`), checked against `info mtree` of QEMU 10.0.2:
//!
//! | machine | RAM below 4 GiB |
//! |---|---|
//! | `q35` | all of it if RAM < 2.75 GiB (`0xb0000000`), else 2 GiB |
//! | `pc` (i440fx) | all of it if RAM < 3.5 GiB (`0xe0000000`), else 3 GiB |
//!
//! `max-ram-below-4g=N` lowers (q35) or sets (pc) that limit.
//!
//! # Limitations
//! QEMU moves RAM above 4 GiB to 1 TiB when an AMD guest CPU would otherwise
//! reach the HyperTransport hole (`x86_update_above_4g_mem_start`, guests of
//! about 1 TiB); that case is not modelled. Other machine types (`microvm`,
//! `isapc`) are refused.

use gmem_protocol::wire::GuestAddress;
use gmemd::size::format_size;

const GIB: u64 = 1 << 30;
/// Where RAM above the 32-bit PCI hole starts.
pub const ABOVE_4G: u64 = 4 * GIB;

/// Errors of the layout computation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// A machine type whose RAM layout gmemctl does not know.
    #[error(
        "machine type {0:?}: its guest-physical RAM layout is unknown to gmemctl \
         (supported: q35, pc-q35-*, pc, pc-i440fx-*)"
    )]
    UnsupportedMachine(String),
    /// `max-ram-below-4g` beyond 4 GiB (QEMU refuses it too).
    #[error("max-ram-below-4g={} exceeds 4 GiB", format_size(*.0))]
    MaxRamBelow4gTooLarge(u64),
    /// No RAM.
    #[error("guest RAM size is zero")]
    NoRam,
}

/// The PC chipsets with known layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chipset {
    /// `q35` and `pc-q35-*`.
    Q35,
    /// `pc` and `pc-i440fx-*` (QEMU's default x86 machine).
    I440fx,
}

/// A machine type with the options that move the RAM split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Type name as given (`q35`, `pc-q35-10.0`, `pc`); `pc` when none was.
    pub type_name: String,
    /// Chipset of that type.
    pub chipset: Chipset,
    /// `max-ram-below-4g`, if set.
    pub max_ram_below_4g: Option<u64>,
}

/// The type qemu-system-x86_64 uses when the arguments name none.
pub const DEFAULT_MACHINE: &str = "pc";

impl Machine {
    /// The machine for a `-machine type=` value (`None`: QEMU's default).
    ///
    /// # Errors
    /// [`LayoutError::UnsupportedMachine`], [`LayoutError::MaxRamBelow4gTooLarge`].
    pub fn new(
        type_name: Option<&str>,
        max_ram_below_4g: Option<u64>,
    ) -> Result<Self, LayoutError> {
        let type_name = type_name.unwrap_or(DEFAULT_MACHINE);
        let chipset = if type_name == "q35" || type_name.starts_with("pc-q35-") {
            Chipset::Q35
        } else if type_name == "pc" || type_name.starts_with("pc-i440fx-") {
            Chipset::I440fx
        } else {
            return Err(LayoutError::UnsupportedMachine(type_name.to_owned()));
        };
        if let Some(limit) = max_ram_below_4g.filter(|&l| l > ABOVE_4G) {
            return Err(LayoutError::MaxRamBelow4gTooLarge(limit));
        }
        Ok(Machine {
            type_name: type_name.to_owned(),
            chipset,
            // QEMU treats 0 as "unset".
            max_ram_below_4g: max_ram_below_4g.filter(|&l| l != 0),
        })
    }

    /// Bytes of RAM QEMU maps below 4 GiB for `ram_size` bytes of RAM.
    pub fn below_4g(&self, ram_size: u64) -> u64 {
        let lowmem = match self.chipset {
            Chipset::Q35 => {
                let lowmem = if ram_size >= 0xb000_0000 {
                    0x8000_0000
                } else {
                    0xb000_0000
                };
                lowmem.min(self.max_ram_below_4g.unwrap_or(ABOVE_4G))
            }
            Chipset::I440fx => {
                let limit = self.max_ram_below_4g.unwrap_or(0xe000_0000);
                // gigabyte_align holds for every i440fx type QEMU 10 has.
                if ram_size >= limit {
                    limit.min(0xc000_0000)
                } else {
                    limit
                }
            }
        };
        ram_size.min(lowmem)
    }

    /// The ranges of the main RAM file QEMU maps, in file order.
    ///
    /// # Errors
    /// [`LayoutError::NoRam`].
    pub fn main_ram(&self, ram_size: u64) -> Result<Vec<RamRange>, LayoutError> {
        if ram_size == 0 {
            return Err(LayoutError::NoRam);
        }
        let low = self.below_4g(ram_size);
        let mut ranges = vec![RamRange {
            gpa: GuestAddress(0),
            offset: 0,
            size: low,
        }];
        if ram_size > low {
            ranges.push(RamRange {
                gpa: GuestAddress(ABOVE_4G),
                offset: low,
                size: ram_size - low,
            });
        }
        Ok(ranges)
    }
}

/// `size` bytes of a memory file from `offset`, mapped at guest-physical `gpa`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RamRange {
    /// Guest-physical address.
    #[serde(with = "crate::launch::vm::serde_fields::gpa")]
    pub gpa: GuestAddress,
    /// Offset in the memory file.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn split(machine: &str, max: Option<u64>, ram: u64) -> Vec<(u64, u64, u64)> {
        Machine::new(Some(machine), max)
            .unwrap()
            .main_ram(ram)
            .unwrap()
            .into_iter()
            .map(|r| (r.gpa.0, r.offset, r.size))
            .collect()
    }

    #[test]
    fn q35_splits_at_2g_from_2_75g() {
        assert_eq!(split("q35", None, 512 * MIB), [(0, 0, 512 * MIB)]);
        // 2815 MiB: just below 0xb0000000, all below 4 GiB (checked with `info mtree`).
        assert_eq!(split("q35", None, 2815 * MIB), [(0, 0, 2815 * MIB)]);
        assert_eq!(
            split("pc-q35-10.0", None, 2816 * MIB),
            [(0, 0, 2 * GIB), (ABOVE_4G, 2 * GIB, 768 * MIB)]
        );
        assert_eq!(
            split("q35", None, 4 * GIB),
            [(0, 0, 2 * GIB), (ABOVE_4G, 2 * GIB, 2 * GIB)]
        );
    }

    #[test]
    fn q35_max_ram_below_4g_only_lowers() {
        assert_eq!(
            split("q35", Some(GIB), 2 * GIB),
            [(0, 0, GIB), (ABOVE_4G, GIB, GIB)]
        );
        // Raising it above QEMU's own split changes nothing.
        assert_eq!(
            split("q35", Some(ABOVE_4G), 3 * GIB),
            [(0, 0, 2 * GIB), (ABOVE_4G, 2 * GIB, GIB)]
        );
        assert_eq!(split("q35", Some(0), 512 * MIB), [(0, 0, 512 * MIB)]);
    }

    #[test]
    fn i440fx_splits_at_3g_from_3_5g() {
        assert_eq!(split("pc", None, 3583 * MIB), [(0, 0, 3583 * MIB)]);
        assert_eq!(
            split("pc-i440fx-9.2", None, 3584 * MIB),
            [(0, 0, 3 * GIB), (ABOVE_4G, 3 * GIB, 512 * MIB)]
        );
        // QEMU's own examples in pc_init1.
        assert_eq!(
            split("pc", Some(2 * GIB), 4 * GIB),
            [(0, 0, 2 * GIB), (ABOVE_4G, 2 * GIB, 2 * GIB)]
        );
        assert_eq!(split("pc", Some(4 * GIB), 3968 * MIB), [(0, 0, 3968 * MIB)]);
    }

    #[test]
    fn default_machine_is_pc() {
        let m = Machine::new(None, None).unwrap();
        assert_eq!((m.type_name.as_str(), m.chipset), ("pc", Chipset::I440fx));
    }

    #[test]
    fn unknown_machines_and_bad_limits_are_refused() {
        for t in ["microvm", "isapc", "virt", "none", "q35x"] {
            assert_eq!(
                Machine::new(Some(t), None),
                Err(LayoutError::UnsupportedMachine(t.to_owned()))
            );
        }
        assert_eq!(
            Machine::new(Some("q35"), Some(5 * GIB)),
            Err(LayoutError::MaxRamBelow4gTooLarge(5 * GIB))
        );
        let m = Machine::new(Some("q35"), None).unwrap();
        assert_eq!(m.main_ram(0), Err(LayoutError::NoRam));
        assert!(LayoutError::UnsupportedMachine("virt".into())
            .to_string()
            .contains("supported: q35"));
    }
}
