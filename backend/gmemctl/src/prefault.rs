//! `gmemctl create --prefault`: waits while gmemd populates the new file,
//! with a progress bar on a terminal and nothing otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use gmem_protocol::wire::{FillState, FillStatus, FillSubject, Name};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::session::{Session, SessionError};

/// How often gmemd is asked how far it got.
const POLL: Duration = Duration::from_millis(50);

/// Why a prefault did not finish.
#[derive(Debug, thiserror::Error)]
pub enum PrefaultError {
    /// gmemd could not be asked.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// gmemd stopped populating.
    #[error(
        "gmemd could not populate {name}: {} (the file is whole; its remaining pages are \
         allocated on first touch)",
        std::io::Error::from_raw_os_error(i32::try_from(*errno).unwrap_or(i32::MAX))
    )]
    Failed {
        /// The file.
        name: Name,
        /// Why.
        errno: u32,
    },
    /// gmemd no longer reports the file.
    #[error(
        "gmemd no longer populates {name}: it restarted, or the file was destroyed or scrubbed \
         meanwhile (run the command again to go on)"
    )]
    Lost {
        /// The file.
        name: Name,
    },
    /// No progress for too long.
    #[error("gmemd populated nothing of {name} for {}s; giving up waiting", .after.as_secs())]
    Stalled {
        /// The file.
        name: Name,
        /// How long nothing moved.
        after: Duration,
    },
}

/// Waits until gmemd has populated every page of the operators' file
/// `name` (`size` bytes). `stall` bounds how long no progress is taken.
///
/// # Errors
/// [`PrefaultError`].
pub fn wait_populated(
    session: &mut Session,
    name: &Name,
    size: u64,
    stall: Duration,
) -> Result<(), PrefaultError> {
    let bar = progress_bar(size);
    let mut last = (0, Instant::now());
    let result = loop {
        let memory = session.memory_status()?;
        let Some(entry) = find(&memory, name) else {
            break Err(PrefaultError::Lost { name: name.clone() });
        };
        bar.set_position(entry.populated);
        match entry.state {
            FillState::Populated => break Ok(()),
            FillState::Failed(errno) => {
                break Err(PrefaultError::Failed {
                    name: name.clone(),
                    errno,
                })
            }
            FillState::Prefaulting | FillState::Pool => {}
        }
        if entry.populated != last.0 {
            last = (entry.populated, Instant::now());
        } else if last.1.elapsed() > stall {
            break Err(PrefaultError::Stalled {
                name: name.clone(),
                after: stall,
            });
        }
        std::thread::sleep(POLL);
    };
    if result.is_ok() {
        bar.finish();
    } else {
        bar.abandon();
    }
    result
}

/// The entry of the operators' file `name`.
fn find<'a>(memory: &'a [FillStatus], name: &Name) -> Option<&'a FillStatus> {
    memory
        .iter()
        .find(|m| matches!(&m.subject, FillSubject::File { uuid: None, name: n } if n == name))
}

/// A bar in bytes on a terminal's stderr; hidden otherwise, so scripts and
/// logs see only the final line.
fn progress_bar(size: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template(
        "prefault [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use gmem_protocol::wire::{MemoryKind, Uuid};

    use super::*;

    fn entry(uuid: Option<Uuid>, name: &str) -> FillStatus {
        FillStatus {
            size: 1 << 30,
            kind: MemoryKind::Memfd,
            populated: 0,
            state: FillState::Prefaulting,
            subject: FillSubject::File {
                uuid,
                name: Name::new(name).unwrap(),
            },
        }
    }

    #[test]
    fn only_the_operators_file_of_that_name_is_found() {
        let name = Name::new("ram").unwrap();
        let memory = vec![entry(Some(Uuid([1; 16])), "ram"), entry(None, "other")];
        assert!(find(&memory, &name).is_none());
        let memory = vec![entry(Some(Uuid([1; 16])), "ram"), entry(None, "ram")];
        assert_eq!(
            find(&memory, &name).map(|m| &m.subject),
            Some(&memory[1].subject)
        );
    }

    #[test]
    fn errors_say_what_happened() {
        let name = Name::new("ram").unwrap();
        let failed = PrefaultError::Failed {
            name: name.clone(),
            errno: 28,
        }
        .to_string();
        assert!(failed.contains("No space left"), "{failed}");
        let lost = PrefaultError::Lost { name }.to_string();
        assert!(lost.contains("restarted"), "{lost}");
    }
}
