//! The user's QEMU arguments: what `gmemctl launch` refuses in them because
//! it sets guest memory itself, and which machine type (hence which RAM
//! layout) they ask for, including through `-readconfig` files.
//!
//! # Limitations
//! Arguments are matched element by element without QEMU's full option
//! table, so an option *value* that is literally `-m` would be taken for
//! the option. Memory set by other means than `-m`, `-mem-path`,
//! `-machine memory-backend=` or a `[memory]` config section is not seen.

use std::path::{Path, PathBuf};

use crate::launch::qemu::layout::{LayoutError, Machine};
use gmemd::size::parse_size;

/// Errors found in the QEMU arguments.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// No QEMU program after `--`.
    #[error("no QEMU command given (expected: -- qemu-system-x86_64 ARGS...)")]
    NoCommand,
    /// An option that sets guest memory.
    #[error(
        "QEMU option {option} sets guest memory, which gmemctl sets itself \
         (use --memory, --max-memory and --slots instead)"
    )]
    SetsMemory {
        /// The option as written.
        option: String,
    },
    /// `-machine memory-backend=…`.
    #[error(
        "QEMU option {option} {value} sets the machine's memory backend, which gmemctl sets \
         itself to the gmemd memory file"
    )]
    SetsMemoryBackend {
        /// The option as written.
        option: String,
        /// Its value.
        value: String,
    },
    /// An option the launcher cannot work with.
    #[error("QEMU option {option} cannot be used under gmemctl: {reason}")]
    Unsupported {
        /// The option as written.
        option: String,
        /// Why.
        reason: &'static str,
    },
    /// An option at the end without its value.
    #[error("QEMU option {0} needs a value")]
    MissingValue(String),
    /// A `-readconfig` file that cannot be read.
    #[error("cannot read QEMU config file {path}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A `-readconfig` file that sets memory.
    #[error("QEMU config file {path}: {what}, which gmemctl sets itself")]
    ConfigSetsMemory {
        /// The file.
        path: PathBuf,
        /// The offending section or key.
        what: String,
    },
    /// A size that does not parse.
    #[error("max-ram-below-4g")]
    BadSize(#[source] gmemd::size::SizeError),
    /// The machine type has no known layout.
    #[error(transparent)]
    Layout(#[from] LayoutError),
}

/// A QEMU command line split into program and arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuCommand {
    /// The QEMU binary.
    pub program: PathBuf,
    /// Its arguments, as the user gave them.
    pub args: Vec<String>,
}

impl QemuCommand {
    /// Splits `program args…`.
    ///
    /// # Errors
    /// [`ArgsError::NoCommand`].
    pub fn from_argv(argv: &[String]) -> Result<Self, ArgsError> {
        let (program, args) = argv.split_first().ok_or(ArgsError::NoCommand)?;
        Ok(QemuCommand {
            program: PathBuf::from(program),
            args: args.to_vec(),
        })
    }

    /// Checks the arguments and returns the machine they select.
    ///
    /// # Errors
    /// Every refusal of [`ArgsError`].
    pub fn machine(&self) -> Result<Machine, ArgsError> {
        let mut found = MachineOpts::default();
        let mut i = 0;
        while i < self.args.len() {
            let arg = &self.args[i];
            let value = || {
                self.args
                    .get(i + 1)
                    .ok_or_else(|| ArgsError::MissingValue(arg.clone()))
            };
            match option_name(arg) {
                Some("m" | "mem-path") => {
                    return Err(ArgsError::SetsMemory {
                        option: arg.clone(),
                    })
                }
                Some("daemonize") => {
                    return Err(ArgsError::Unsupported {
                        option: arg.clone(),
                        reason: "gmemctl must stay QEMU's parent to supervise it",
                    })
                }
                Some("machine" | "M") => {
                    let value = value()?;
                    found.apply_machine_option(arg, value)?;
                    i += 1;
                }
                Some("readconfig") => {
                    found.apply_config_file(Path::new(value()?))?;
                    i += 1;
                }
                _ => {}
            }
            i += 1;
        }
        Ok(Machine::new(
            found.type_name.as_deref(),
            found.max_ram_below_4g,
        )?)
    }

    /// The arguments without any `-incoming URI` (an upgrade target gets
    /// its own `-incoming defer`).
    pub fn without_incoming(&self) -> QemuCommand {
        let mut args = Vec::with_capacity(self.args.len());
        let mut skip = false;
        for arg in &self.args {
            if std::mem::take(&mut skip) {
                continue;
            }
            if option_name(arg) == Some("incoming") {
                skip = true;
                continue;
            }
            args.push(arg.clone());
        }
        QemuCommand {
            program: self.program.clone(),
            args,
        }
    }

    /// Serial or chardev files QEMU would truncate when it starts: after an
    /// upgrade the new QEMU would wipe the console log the old one wrote.
    pub fn truncating_log_files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for pair in self.args.windows(2) {
            let (opt, value) = (option_name(&pair[0]), pair[1].as_str());
            let truncates = match opt {
                Some("serial" | "monitor" | "parallel") => value.starts_with("file:"),
                Some("chardev") => {
                    value.starts_with("file,")
                        && !split_opts(value).iter().any(|kv| kv == "append=on")
                }
                _ => false,
            };
            if truncates {
                out.push(format!("{} {value}", pair[0]));
            }
        }
        out
    }
}

/// `-opt` or `--opt` → `opt`.
fn option_name(arg: &str) -> Option<&str> {
    let name = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    (!name.is_empty()).then_some(name)
}

/// QEMU's option splitting: `,` separates, `,,` is a literal comma.
fn split_opts(value: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                parts.last_mut().expect("non-empty").push(',');
            } else {
                parts.push(String::new());
            }
        } else {
            parts.last_mut().expect("non-empty").push(c);
        }
    }
    parts
}

/// What the machine options say so far (later options override earlier ones,
/// as QEMU merges them).
#[derive(Debug, Default)]
struct MachineOpts {
    type_name: Option<String>,
    max_ram_below_4g: Option<u64>,
}

impl MachineOpts {
    fn apply_machine_option(&mut self, option: &str, value: &str) -> Result<(), ArgsError> {
        for (n, part) in split_opts(value).iter().enumerate() {
            match part.split_once('=') {
                // The implied key of -machine is `type`.
                None if n == 0 && !part.is_empty() => self.type_name = Some(part.clone()),
                None => {}
                Some((key, v)) => {
                    self.apply_key(key, v).map_err(|e| match e {
                        KeyError::MemoryBackend => ArgsError::SetsMemoryBackend {
                            option: option.to_owned(),
                            value: value.to_owned(),
                        },
                        KeyError::Size(s) => ArgsError::BadSize(s),
                    })?;
                }
            }
        }
        Ok(())
    }

    fn apply_key(&mut self, key: &str, value: &str) -> Result<(), KeyError> {
        match key {
            "type" => self.type_name = Some(value.to_owned()),
            "max-ram-below-4g" => {
                self.max_ram_below_4g = Some(parse_size(value).map_err(KeyError::Size)?);
            }
            "memory-backend" => return Err(KeyError::MemoryBackend),
            _ => {}
        }
        Ok(())
    }

    /// A `-readconfig` file: `[section]` or `[section "id"]` headers and
    /// `key = "value"` lines, `#` comments.
    fn apply_config_file(&mut self, path: &Path) -> Result<(), ArgsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ArgsError::ReadConfig {
            path: path.to_owned(),
            source,
        })?;
        let sets_memory = |what: String| ArgsError::ConfigSetsMemory {
            path: path.to_owned(),
            what,
        };
        let mut section = String::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = header
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                if section == "memory" {
                    return Err(sets_memory("section [memory] sets guest memory".into()));
                }
                continue;
            }
            if section != "machine" {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            self.apply_key(key.trim(), value).map_err(|e| match e {
                KeyError::MemoryBackend => {
                    sets_memory(format!("[machine] memory-backend = \"{value}\""))
                }
                KeyError::Size(s) => ArgsError::BadSize(s),
            })?;
        }
        Ok(())
    }
}

enum KeyError {
    MemoryBackend,
    Size(gmemd::size::SizeError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::qemu::layout::Chipset;

    fn cmd(args: &[&str]) -> QemuCommand {
        let mut argv = vec!["qemu-system-x86_64".to_owned()];
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        QemuCommand::from_argv(&argv).unwrap()
    }

    #[test]
    fn machine_type_from_options() {
        let m = cmd(&["-accel", "tcg", "-machine", "q35,smm=off"])
            .machine()
            .unwrap();
        assert_eq!((m.type_name.as_str(), m.chipset), ("q35", Chipset::Q35));
        let m = cmd(&["-M", "pc-q35-10.0", "--machine", "max-ram-below-4g=1G"])
            .machine()
            .unwrap();
        assert_eq!(m.type_name, "pc-q35-10.0");
        assert_eq!(m.max_ram_below_4g, Some(1 << 30));
        let m = cmd(&["-machine", "type=pc,accel=tcg"]).machine().unwrap();
        assert_eq!(m.chipset, Chipset::I440fx);
        assert_eq!(cmd(&["-nodefaults"]).machine().unwrap().type_name, "pc");
    }

    #[test]
    fn memory_options_are_refused() {
        for args in [
            &["-m", "1G"][..],
            &["--m", "size=1G"],
            &["-mem-path", "/dev/hugepages"],
        ] {
            let err = cmd(args).machine().unwrap_err();
            assert!(matches!(err, ArgsError::SetsMemory { .. }), "{err}");
            assert!(err.to_string().contains("--memory"), "{err}");
        }
        let err = cmd(&["-machine", "q35,memory-backend=mem0"])
            .machine()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("-machine q35,memory-backend=mem0 sets the machine's memory backend"),
            "{err}"
        );
        let err = cmd(&["-daemonize"]).machine().unwrap_err();
        assert!(matches!(err, ArgsError::Unsupported { .. }), "{err}");
        assert!(matches!(
            cmd(&["-machine"]).machine().unwrap_err(),
            ArgsError::MissingValue(_)
        ));
        assert!(matches!(
            cmd(&["-machine", "microvm"]).machine().unwrap_err(),
            ArgsError::Layout(LayoutError::UnsupportedMachine(_))
        ));
        assert!(matches!(
            cmd(&["-machine", "q35,max-ram-below-4g=lots"])
                .machine()
                .unwrap_err(),
            ArgsError::BadSize(_)
        ));
        // A value that merely contains "-m" is not the option.
        cmd(&["-append", "console=ttyS0 -m"]).machine().unwrap();
    }

    #[test]
    fn readconfig_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.cfg");
        std::fs::write(
            &good,
            "# comment\n[chardev \"ser0\"]\n  type = \"pc\"\n\n[machine]\n  type = \"q35\"\n  \
             max-ram-below-4g = \"2G\"\n",
        )
        .unwrap();
        let m = cmd(&["-readconfig", good.to_str().unwrap()])
            .machine()
            .unwrap();
        assert_eq!(m.type_name, "q35");
        assert_eq!(m.max_ram_below_4g, Some(2 << 30));
        // A later -machine overrides the file, as in QEMU.
        let m = cmd(&["-readconfig", good.to_str().unwrap(), "-M", "pc"])
            .machine()
            .unwrap();
        assert_eq!(m.type_name, "pc");

        let mem = dir.path().join("mem.cfg");
        std::fs::write(&mem, "[memory]\n  size = \"1G\"\n").unwrap();
        let err = cmd(&["-readconfig", mem.to_str().unwrap()])
            .machine()
            .unwrap_err();
        assert!(err.to_string().contains("[memory]"), "{err}");
        let backend = dir.path().join("backend.cfg");
        std::fs::write(&backend, "[machine]\n  memory-backend = \"m\"\n").unwrap();
        let err = cmd(&["-readconfig", backend.to_str().unwrap()])
            .machine()
            .unwrap_err();
        assert!(err.to_string().contains("memory-backend"), "{err}");
        let err = cmd(&["-readconfig", "/nonexistent.cfg"])
            .machine()
            .unwrap_err();
        assert!(matches!(err, ArgsError::ReadConfig { .. }), "{err}");
    }

    #[test]
    fn incoming_is_stripped_and_truncating_logs_are_found() {
        let c = cmd(&[
            "-S",
            "-incoming",
            "tcp:0:4444",
            "--incoming",
            "defer",
            "-nodefaults",
        ]);
        assert_eq!(c.without_incoming().args, ["-S", "-nodefaults"]);
        let c = cmd(&[
            "-serial",
            "file:/tmp/a",
            "-chardev",
            "file,id=c,path=/tmp/b",
            "-chardev",
            "file,id=d,path=/tmp/c,append=on",
            "-serial",
            "stdio",
        ]);
        assert_eq!(
            c.truncating_log_files(),
            ["-serial file:/tmp/a", "-chardev file,id=c,path=/tmp/b"]
        );
        assert_eq!(split_opts("a,,b,c"), ["a,b", "c"]);
        assert!(matches!(
            QemuCommand::from_argv(&[]),
            Err(ArgsError::NoCommand)
        ));
    }
}
