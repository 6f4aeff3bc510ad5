//! The guest: a few bytes of 16-bit real-mode code, assembled by hand.
//!
//! Memory layout (guest-physical; CS = DS = 0, so offsets are addresses):
//!
//! | GPA      | what                                                          |
//! |----------|---------------------------------------------------------------|
//! | `0x0000` | [`GUEST_CODE`] ([`CODE_GPA`]), entry points [`ONCE_ENTRY`], [`LOOP_ENTRY`] |
//! | `0x1000` | `u64` boot counter ([`COUNTER_GPA`]), bumped once per run      |
//! | `0x1008` | `u64` tick counter ([`TICK_GPA`]), bumped by the loop mode     |
//!
//! Both counters live in guest RAM, so they persist exactly as long as the memory does:
//! running the guest three times over the same memfd prints `counter 1`, `2`, `3`.
//!
//! Reporting is by port I/O, 4 bytes per `out`, low half first:
//! [`PORT_COUNTER_LO`]/[`PORT_COUNTER_HI`] carry the new boot counter,
//! [`PORT_TICK_LO`]/[`PORT_TICK_HI`] the new tick counter. A value is complete when its high
//! half arrives. Each counter is written back to memory *before* it is reported, so after a
//! kill the memory holds the last reported value or one more.
//!
//! Registers the VMM sets before `KVM_RUN` (see [`GuestMode`]):
//! - `BX`: 0 = once (bump the boot counter, report, `hlt`); non-zero = loop (bump the boot
//!   counter, report, then forever bump and report the tick counter).
//! - `ESI`: delay-loop iterations between two ticks (loop mode; must be non-zero).

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap};

/// Where [`GUEST_CODE`] is loaded; CS base is 0, so `IP = CODE_GPA + entry`.
pub const CODE_GPA: u64 = 0x0;
/// The boot counter (`u64`, little endian).
pub const COUNTER_GPA: u64 = 0x1000;
/// The tick counter (`u64`, little endian).
pub const TICK_GPA: u64 = 0x1008;
/// Guest RAM must cover `[0, MIN_MEMORY_SIZE)`.
pub const MIN_MEMORY_SIZE: u64 = 0x2000;

/// Low 32 bits of the new boot counter.
pub const PORT_COUNTER_LO: u16 = 0x10;
/// High 32 bits of the new boot counter; completes the value.
pub const PORT_COUNTER_HI: u16 = 0x11;
/// Low 32 bits of the new tick counter.
pub const PORT_TICK_LO: u16 = 0x12;
/// High 32 bits of the new tick counter; completes the value.
pub const PORT_TICK_HI: u16 = 0x13;

/// Offset of the once/loop entry point (both modes start here; `BX` picks the mode).
pub const ONCE_ENTRY: u16 = 0x00;
/// Offset of the tick loop (reached from [`ONCE_ENTRY`] when `BX != 0`).
#[allow(dead_code)] // layout documentation, checked by the tests
pub const LOOP_ENTRY: u16 = 0x2a;
/// Offset of the `hlt` that ends the once mode.
#[allow(dead_code)] // layout documentation, checked by the tests
pub const HLT_OFFSET: usize = 0x27;

// The code ends below the data; the data is reachable with 16-bit offsets from DS = 0.
const _: () = assert!(CODE_GPA + GUEST_CODE.len() as u64 <= COUNTER_GPA);
const _: () = assert!(TICK_GPA + 8 <= MIN_MEMORY_SIZE && MIN_MEMORY_SIZE <= 0x1_0000);

/// The guest program. `0x66` is the operand-size prefix: in real mode it turns the 16-bit
/// form of an instruction into the 32-bit one (`ax` -> `eax`). Memory operands are 16-bit
/// absolute offsets (`disp16`, ModRM `rm = 110`) relative to `DS = 0`.
#[rustfmt::skip]
pub const GUEST_CODE: [u8; 0x56] = [
    // --- 0x00: boot counter += 1 (64-bit, as edx:eax) ---
    0x66, 0xa1, 0x00, 0x10,       // 0x00 mov eax, [0x1000]    ; A1 moffs16: low dword
    0x66, 0x8b, 0x16, 0x04, 0x10, // 0x04 mov edx, [0x1004]    ; 8B /r, ModRM 00 010 110: high dword
    0x66, 0x83, 0xc0, 0x01,       // 0x09 add eax, 1           ; 83 /0 ib, ModRM 11 000 000
    0x66, 0x83, 0xd2, 0x00,       // 0x0d adc edx, 0           ; 83 /2 ib, ModRM 11 010 010: carry
    0x66, 0xa3, 0x00, 0x10,       // 0x11 mov [0x1000], eax    ; A3 moffs16
    0x66, 0x89, 0x16, 0x04, 0x10, // 0x15 mov [0x1004], edx    ; 89 /r, ModRM 00 010 110
    // --- report it ---
    0x66, 0xe7, 0x10,             // 0x1a out 0x10, eax        ; E7 ib: low half
    0x66, 0x89, 0xd0,             // 0x1d mov eax, edx         ; 89 /r, ModRM 11 010 000
    0x66, 0xe7, 0x11,             // 0x20 out 0x11, eax        ; high half, value complete
    // --- mode switch ---
    0x85, 0xdb,                   // 0x23 test bx, bx          ; 85 /r, ModRM 11 011 011
    0x75, 0x03,                   // 0x25 jnz 0x2a             ; rel8 +3: loop mode
    0xf4,                         // 0x27 hlt                  ; once mode ends here
    0xeb, 0xfd,                   // 0x28 jmp 0x27             ; rel8 -3: stay halted if resumed
    // --- 0x2a: loop: tick counter += 1 ---
    0x66, 0xa1, 0x08, 0x10,       // 0x2a mov eax, [0x1008]
    0x66, 0x8b, 0x16, 0x0c, 0x10, // 0x2e mov edx, [0x100c]
    0x66, 0x83, 0xc0, 0x01,       // 0x33 add eax, 1
    0x66, 0x83, 0xd2, 0x00,       // 0x37 adc edx, 0
    0x66, 0xa3, 0x08, 0x10,       // 0x3b mov [0x1008], eax
    0x66, 0x89, 0x16, 0x0c, 0x10, // 0x3f mov [0x100c], edx
    0x66, 0xe7, 0x12,             // 0x44 out 0x12, eax
    0x66, 0x89, 0xd0,             // 0x47 mov eax, edx
    0x66, 0xe7, 0x13,             // 0x4a out 0x13, eax
    // --- delay: ecx = esi; do { ecx -= 1 } while ecx != 0 ---
    0x66, 0x89, 0xf1,             // 0x4d mov ecx, esi         ; 89 /r, ModRM 11 110 001
    0x66, 0x49,                   // 0x50 dec ecx              ; 48+r (one-byte dec outside 64-bit mode)
    0x75, 0xfc,                   // 0x52 jnz 0x50             ; rel8 -4
    0xeb, 0xd4,                   // 0x54 jmp 0x2a             ; rel8 -44
];

/// How to run the guest; sets `BX` and `ESI`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// Bump and report the boot counter, then `hlt`.
    Once,
    /// Bump and report the boot counter, then bump and report the tick counter forever,
    /// spinning `delay` iterations (at least 1) between two ticks.
    Loop {
        /// Delay-loop iterations between ticks; about 1 ns each.
        delay: u32,
    },
}

impl GuestMode {
    /// Value for `RBX`.
    pub fn rbx(self) -> u64 {
        match self {
            Self::Once => 0,
            Self::Loop { .. } => 1,
        }
    }

    /// Value for `RSI`: the delay, at least 1 (0 would spin 2^32 times).
    pub fn rsi(self) -> u64 {
        match self {
            Self::Once => 0,
            Self::Loop { delay } => u64::from(delay.max(1)),
        }
    }
}

/// Writes [`GUEST_CODE`] at [`CODE_GPA`]. Leaves the counters alone. Fails if `mem` does
/// not cover `[0, MIN_MEMORY_SIZE)`.
pub fn load(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    // Both ends must be mapped (a hole in between would fail the counter accesses later).
    for end in [0, MIN_MEMORY_SIZE - 1] {
        if !mem.address_in_range(GuestAddress(end)) {
            return Err(GuestMemoryError::InvalidGuestAddress(GuestAddress(end)));
        }
    }
    mem.write_slice(&GUEST_CODE, GuestAddress(CODE_GPA))
}

/// Reads the boot counter from guest memory.
pub fn read_counter(mem: &GuestMemoryMmap) -> Result<u64, GuestMemoryError> {
    mem.read_obj::<u64>(GuestAddress(COUNTER_GPA))
        .map(u64::from_le)
}

/// Reads the tick counter from guest memory.
pub fn read_ticks(mem: &GuestMemoryMmap) -> Result<u64, GuestMemoryError> {
    mem.read_obj::<u64>(GuestAddress(TICK_GPA))
        .map(u64::from_le)
}

/// Sets both counters.
#[cfg(test)]
pub fn write_counters(
    mem: &GuestMemoryMmap,
    counter: u64,
    ticks: u64,
) -> Result<(), GuestMemoryError> {
    mem.write_obj(counter.to_le(), GuestAddress(COUNTER_GPA))?;
    mem.write_obj(ticks.to_le(), GuestAddress(TICK_GPA))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Target of the 2-byte `jcc/jmp rel8` at `at`.
    fn rel8_target(at: usize) -> usize {
        let rel = i8::from_ne_bytes([GUEST_CODE[at + 1]]);
        (at + 2).checked_add_signed(isize::from(rel)).unwrap()
    }

    #[test]
    fn code_length() {
        assert_eq!(GUEST_CODE.len(), 0x56);
    }

    #[test]
    fn code_references_the_data_addresses() {
        let word = |at: usize| u64::from(u16::from_le_bytes([GUEST_CODE[at], GUEST_CODE[at + 1]]));
        assert_eq!(word(0x02), COUNTER_GPA);
        assert_eq!(word(0x07), COUNTER_GPA + 4);
        assert_eq!(word(0x13), COUNTER_GPA);
        assert_eq!(word(0x18), COUNTER_GPA + 4);
        assert_eq!(word(0x2c), TICK_GPA);
        assert_eq!(word(0x31), TICK_GPA + 4);
        assert_eq!(word(0x3d), TICK_GPA);
        assert_eq!(word(0x42), TICK_GPA + 4);
    }

    #[test]
    fn code_ports_and_jumps() {
        // `66 E7 ib`: out imm8, eax.
        for (at, port) in [
            (0x1a, PORT_COUNTER_LO),
            (0x20, PORT_COUNTER_HI),
            (0x44, PORT_TICK_LO),
            (0x4a, PORT_TICK_HI),
        ] {
            assert_eq!(&GUEST_CODE[at..at + 2], &[0x66, 0xe7], "at {at:#x}");
            assert_eq!(u16::from(GUEST_CODE[at + 2]), port, "at {at:#x}");
        }
        assert_eq!(GUEST_CODE[HLT_OFFSET], 0xf4);
        assert_eq!(rel8_target(0x25), usize::from(LOOP_ENTRY));
        assert_eq!(rel8_target(0x28), HLT_OFFSET);
        assert_eq!(rel8_target(0x52), 0x50);
        assert_eq!(rel8_target(0x54), usize::from(LOOP_ENTRY));
        assert_eq!(usize::from(ONCE_ENTRY), 0);
    }

    #[test]
    fn mode_registers() {
        assert_eq!(GuestMode::Once.rbx(), 0);
        assert_eq!(GuestMode::Loop { delay: 0 }.rsi(), 1);
        assert_eq!(GuestMode::Loop { delay: 7 }.rsi(), 7);
        assert_ne!(GuestMode::Loop { delay: 7 }.rbx(), 0);
    }

    #[test]
    fn load_and_counters_roundtrip() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x2000)]).unwrap();
        load(&mem).unwrap();
        let mut code = [0u8; GUEST_CODE.len()];
        mem.read_slice(&mut code, GuestAddress(CODE_GPA)).unwrap();
        assert_eq!(code, GUEST_CODE);
        write_counters(&mem, 5, u64::from(u32::MAX) + 1).unwrap();
        assert_eq!(read_counter(&mem).unwrap(), 5);
        assert_eq!(read_ticks(&mem).unwrap(), 1 << 32);
        // Loading the code again must not reset the counters.
        load(&mem).unwrap();
        assert_eq!(read_counter(&mem).unwrap(), 5);
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        assert!(load(&small).is_err());
    }
}
