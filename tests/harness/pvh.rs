//! A PVH guest for cloud-hypervisor: an ELF64 with a few bytes of 32-bit
//! protected-mode code, assembled by hand (no assembler on the machine is
//! needed), and its RAM seen through the test's own fd of the gmemd file.
//!
//! cloud-hypervisor enters a PVH payload in 32-bit protected mode with flat
//! segments at the address in its `XEN_ELFNOTE_PHYS32_ENTRY` note. The code
//! runs at [`CODE_GPA`] and keeps its state in RAM below it, so the state
//! outlives the process exactly as long as the memory does:
//!
//! | GPA          | what                                                      |
//! |--------------|-----------------------------------------------------------|
//! | [`MARKER_GPA`]  | `GMEMPVH!`, written at every boot                      |
//! | [`BOOTS_GPA`]   | `u32` boot count, +1 at every boot                     |
//! | [`COUNTER_GPA`] | `u32` counter, +1 per loop round, never reset          |
//! | [`COMMAND_GPA`] | the test writes [`POWER_OFF`] here to end the guest    |
//!
//! At boot the guest prints [`UP_LINE`] on the serial port (0x3f8); on
//! [`POWER_OFF`] it writes 0x34 (S5) to the ACPI PM1a control port 0x600,
//! and cloud-hypervisor exits 0.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// Where the code is loaded and entered.
pub const CODE_GPA: u32 = 0x10_0000;
/// The boot marker (8 bytes).
pub const MARKER_GPA: u64 = 0x1000;
/// The boot count.
pub const BOOTS_GPA: u64 = 0x1008;
/// The counter.
pub const COUNTER_GPA: u64 = 0x1010;
/// The command word.
pub const COMMAND_GPA: u64 = 0x1020;
/// What the guest writes at [`MARKER_GPA`].
pub const MARKER: &[u8; 8] = b"GMEMPVH!";
/// The command that powers the guest off.
pub const POWER_OFF: &[u8; 4] = b"HALT";
/// The guest's line on the serial console at boot.
pub const UP_LINE: &str = "gmem-pvh: up";

fn imm32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

fn addr32(gpa: u64) -> [u8; 4] {
    imm32(u32::try_from(gpa).expect("below 4 GiB"))
}

/// The guest's code, to be loaded at [`CODE_GPA`].
pub fn code() -> Vec<u8> {
    let mut c = Vec::new();
    c.push(0xfc); // cld: lodsb walks forwards
                  // mov dword [MARKER_GPA], "GMEM" / "PVH!"     (C7 /0 disp32 imm32)
    c.extend([0xc7, 0x05]);
    c.extend(addr32(MARKER_GPA));
    c.extend(&MARKER[..4]);
    c.extend([0xc7, 0x05]);
    c.extend(addr32(MARKER_GPA + 4));
    c.extend(&MARKER[4..]);
    // inc dword [BOOTS_GPA]                        (FF /0 disp32)
    c.extend([0xff, 0x05]);
    c.extend(addr32(BOOTS_GPA));
    // mov esi, line; mov dx, 0x3f8                 (BE imm32; 66 BA imm16)
    let line_fixup = c.len() + 1;
    c.extend([0xbe, 0, 0, 0, 0]);
    c.extend([0x66, 0xba, 0xf8, 0x03]);
    // print: lodsb; test al, al; jz +3; out dx, al; jmp print
    let print = c.len();
    c.extend([0xac, 0x84, 0xc0, 0x74, 0x03, 0xee, 0xeb]);
    c.push(rel8(print, c.len() + 1));
    // count: inc dword [COUNTER_GPA]
    let count = c.len();
    c.extend([0xff, 0x05]);
    c.extend(addr32(COUNTER_GPA));
    // cmp dword [COMMAND_GPA], "HALT"; jne count   (81 /7 disp32 imm32; 75 rel8)
    c.extend([0x81, 0x3d]);
    c.extend(addr32(COMMAND_GPA));
    c.extend(POWER_OFF);
    c.push(0x75);
    c.push(rel8(count, c.len() + 1));
    // mov al, 0x34; mov dx, 0x600; out dx, al; halt: hlt; jmp halt
    c.extend([0xb0, 0x34, 0x66, 0xba, 0x00, 0x06, 0xee, 0xf4, 0xeb, 0xfd]);
    let line = c.len();
    c.extend(UP_LINE.as_bytes());
    c.extend(b"\n\0");
    let line_gpa = CODE_GPA + u32::try_from(line).expect("small");
    c[line_fixup..line_fixup + 4].copy_from_slice(&imm32(line_gpa));
    c
}

/// `rel8` of a jump to `target` from the instruction that starts at `next`
/// (the displacement byte is the last of the jump, at `next - 1`).
fn rel8(target: usize, next: usize) -> u8 {
    let delta = i64::try_from(target).unwrap() - i64::try_from(next).unwrap();
    i8::try_from(delta).expect("a short jump").to_le_bytes()[0]
}

/// The guest as a PVH ELF64: one `PT_LOAD` of [`code`] at [`CODE_GPA`],
/// one `PT_NOTE` "Xen" type 18 (`XEN_ELFNOTE_PHYS32_ENTRY`) with the entry.
pub fn elf() -> Vec<u8> {
    const EHDR: u16 = 64;
    const PHDR: u16 = 56;
    const CODE_OFFSET: usize = 0x1000;
    let code = code();
    let mut note = Vec::new();
    for word in [4u32, 4, 18] {
        note.extend(word.to_le_bytes()); // namesz, descsz, type
    }
    note.extend(b"Xen\0");
    note.extend(imm32(CODE_GPA));
    let (ehdr, phdr_size) = (usize::from(EHDR), usize::from(PHDR));
    let note_offset = ehdr + 2 * phdr_size;
    let mut elf = vec![0u8; CODE_OFFSET + code.len()];
    let mut w = |at: usize, bytes: &[u8]| elf[at..at + bytes.len()].copy_from_slice(bytes);
    w(0, b"\x7fELF\x02\x01\x01"); // 64-bit, little endian, version 1
    w(16, &2u16.to_le_bytes()); // ET_EXEC
    w(18, &62u16.to_le_bytes()); // EM_X86_64
    w(20, &1u32.to_le_bytes());
    w(24, &u64::from(CODE_GPA).to_le_bytes()); // e_entry
    w(32, &u64::from(EHDR).to_le_bytes()); // e_phoff
    w(52, &EHDR.to_le_bytes()); // e_ehsize
    w(54, &PHDR.to_le_bytes()); // e_phentsize
    w(56, &2u16.to_le_bytes()); // e_phnum
    w(58, &64u16.to_le_bytes()); // e_shentsize
    let phdr = |kind: u32, flags: u32, offset: usize, addr: u64, size: usize, align: u64| {
        let mut p = Vec::new();
        p.extend(kind.to_le_bytes());
        p.extend(flags.to_le_bytes());
        p.extend((offset as u64).to_le_bytes());
        p.extend(addr.to_le_bytes()); // p_vaddr
        p.extend(addr.to_le_bytes()); // p_paddr
        p.extend((size as u64).to_le_bytes()); // p_filesz
        p.extend((size as u64).to_le_bytes()); // p_memsz
        p.extend(align.to_le_bytes());
        p
    };
    let load = phdr(1, 7, CODE_OFFSET, u64::from(CODE_GPA), code.len(), 0x1000);
    let note_h = phdr(4, 4, note_offset, 0, note.len(), 4);
    w(ehdr, &load);
    w(ehdr + phdr_size, &note_h);
    w(note_offset, &note);
    w(CODE_OFFSET, &code);
    elf
}

/// Writes the guest to `DIR/pvh.elf` and returns its path.
pub fn write_elf(dir: &Path) -> PathBuf {
    let path = dir.join("pvh.elf");
    std::fs::write(&path, elf()).expect("write the PVH guest");
    path
}

/// The guest's RAM through an fd of its gmemd memory file (guest-physical
/// address = file offset below 3 GiB).
#[derive(Debug)]
pub struct GuestRam {
    fd: OwnedFd,
}

impl GuestRam {
    /// RAM in memory file `fd`.
    pub fn new(fd: OwnedFd) -> Self {
        GuestRam { fd }
    }

    /// The memory file.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// `len` bytes at `gpa`.
    pub fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        let n = rustix::io::pread(&self.fd, &mut buf, gpa).expect("pread guest RAM");
        assert_eq!(n, len, "short read at {gpa:#x}");
        buf
    }

    fn u32_at(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.read(gpa, 4).try_into().unwrap())
    }

    /// Whether the boot marker is there.
    pub fn has_marker(&self) -> bool {
        self.read(MARKER_GPA, 8) == MARKER
    }

    /// The boot count.
    pub fn boots(&self) -> u32 {
        self.u32_at(BOOTS_GPA)
    }

    /// The counter (one aligned 32-bit read: never torn).
    pub fn counter(&self) -> u32 {
        self.u32_at(COUNTER_GPA)
    }

    /// Asks the guest to power off.
    pub fn power_off(&self) {
        rustix::io::pwrite(&self.fd, POWER_OFF, COMMAND_GPA).expect("pwrite");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jumps_land_on_their_targets() {
        let c = code();
        // jmp print (EB) goes back to lodsb (AC); jne count (75) back to inc (FF 05).
        let target = |at: usize| {
            let rel = i8::from_le_bytes([c[at + 1]]);
            (at + 2).checked_add_signed(isize::from(rel)).unwrap()
        };
        let jmp = c.iter().position(|&b| b == 0xeb).unwrap();
        assert_eq!(c[target(jmp)], 0xac);
        let jne = c.iter().position(|&b| b == 0x75).unwrap();
        assert_eq!(&c[target(jne)..target(jne) + 2], [0xff, 0x05]);
        assert!(elf().ends_with(b"gmem-pvh: up\n\0"));
    }
}
