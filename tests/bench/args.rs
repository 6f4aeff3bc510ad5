//! The bench's command line. Hand-parsed: the test crate has no argument
//! parser, and seven flags do not need one.

use gmemd::size::{format_size, parse_size};

/// The row groups, in the order they run and print.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// BIND+UNBIND round trip and throughput beside echo servers.
    Requests,
    /// Request rate with a full ledger beside an empty one.
    Ledger,
    /// Populating SIZE: `gmemctl create --prefault` beside raw kernel calls and QEMU.
    Prefault,
    /// Start to running QEMU on populated RAM: a warm pool beside QEMU's prealloc.
    Launch,
    /// First touch of every page: pool memory beside fresh memory.
    Touch,
    /// `gmemctl upgrade` beside QEMU's copying migration.
    Upgrade,
}

impl Group {
    /// Every group, in run order.
    pub const ALL: [Group; 6] = [
        Group::Requests,
        Group::Ledger,
        Group::Prefault,
        Group::Launch,
        Group::Touch,
        Group::Upgrade,
    ];

    /// Its name on the command line (`--only`).
    pub fn name(self) -> &'static str {
        match self {
            Group::Requests => "requests",
            Group::Ledger => "ledger",
            Group::Prefault => "prefault",
            Group::Launch => "launch",
            Group::Touch => "touch",
            Group::Upgrade => "upgrade",
        }
    }

    fn parse(text: &str) -> Result<Group, String> {
        Group::ALL
            .into_iter()
            .find(|g| g.name() == text)
            .ok_or_else(|| {
                let names: Vec<_> = Group::ALL.iter().map(|g| g.name()).collect();
                format!("unknown group {text:?} in --only: use {}", names.join(", "))
            })
    }
}

/// What to measure and how hard.
#[derive(Debug, Clone)]
pub struct Options {
    /// Tiny sizes and one round: every row exercised in about a minute.
    pub smoke: bool,
    /// Memory size of the prefault, launch and touch groups, in bytes.
    pub size: u64,
    /// Client counts of the request group.
    pub clients: Vec<usize>,
    /// Interleaved rounds whose medians are reported.
    pub rounds: usize,
    /// The groups to run.
    pub only: Vec<Group>,
    /// Guest sizes of the upgrade group, in GiB.
    pub upgrade_gib: Vec<u64>,
    /// The arguments as given, for the closing line.
    pub given: Vec<String>,
}

/// Sizes are whole MiB (QEMU's `-m` takes MiB) and at least this.
const MIN_SIZE: u64 = 16 << 20;

pub const USAGE: &str = "\
usage: cargo run --release -p gmem-tests --bin bench -- [FLAGS]
  --smoke                 tiny sizes, one round: every row in about 20 seconds (CI)
  --size SIZE             memory of the prefault, launch and touch rows [4G; smoke 256M]
  --clients N[,N...]      clients of the request rows [1,8,64,200]
  --rounds N              interleaved rounds, medians reported [5; smoke 1]
  --only GROUP[,GROUP...] requests, ledger, prefault, launch, touch, upgrade [all]
  --upgrade-sizes G[,G..] guest RAM of the upgrade rows, GiB [1,2,4; smoke 1]
Build what it measures first: cargo build --release -p gmemd -p gmemctl";

impl Options {
    /// Parses `args` (without the program name).
    ///
    /// # Errors
    /// A message naming the bad flag or value; `Ok(None)` for `--help`.
    pub fn parse(args: &[String]) -> Result<Option<Options>, String> {
        let smoke = args.iter().any(|a| a == "--smoke");
        let mut options = Options {
            smoke,
            size: if smoke { 256 << 20 } else { 4 << 30 },
            clients: vec![1, 8, 64, 200],
            rounds: if smoke { 1 } else { 5 },
            only: Group::ALL.to_vec(),
            upgrade_gib: if smoke { vec![1] } else { vec![1, 2, 4] },
            given: args.to_vec(),
        };
        let mut rest = args.iter();
        while let Some(flag) = rest.next() {
            let mut value = || {
                rest.next()
                    .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
            };
            match flag.as_str() {
                "--smoke" => {}
                "-h" | "--help" => return Ok(None),
                "--size" => options.size = size(value()?)?,
                "--clients" => options.clients = list(flag, value()?, 1)?,
                "--rounds" => options.rounds = number(flag, value()?, 1)?,
                "--only" => {
                    options.only = value()?
                        .split(',')
                        .map(Group::parse)
                        .collect::<Result<_, _>>()?;
                }
                "--upgrade-sizes" => options.upgrade_gib = list(flag, value()?, 1)?,
                // `cargo bench`-style harness flags are not ours.
                other => return Err(format!("unknown flag {other:?}\n{USAGE}")),
            }
        }
        Ok(Some(options))
    }

    /// Whether `group` runs.
    pub fn runs(&self, group: Group) -> bool {
        self.only.contains(&group)
    }
}

/// A memory size: gmemd's own size syntax, whole MiB.
fn size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text).map_err(|e| format!("--size: {e}"))?;
    if bytes < MIN_SIZE || bytes % (1 << 20) != 0 {
        return Err(format!(
            "--size {text}: use whole MiB, at least {}",
            format_size(MIN_SIZE)
        ));
    }
    Ok(bytes)
}

fn number<T: std::str::FromStr + PartialOrd + std::fmt::Display>(
    flag: &str,
    text: &str,
    min: T,
) -> Result<T, String> {
    match text.parse::<T>() {
        Ok(n) if n >= min => Ok(n),
        _ => Err(format!(
            "{flag} {text:?}: expected a whole number of at least {min}"
        )),
    }
}

fn list<T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy>(
    flag: &str,
    text: &str,
    min: T,
) -> Result<Vec<T>, String> {
    text.split(',')
        .map(|n| number(flag, n.trim(), min))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Options>, String> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        Options::parse(&args)
    }

    #[test]
    fn defaults_and_smoke() {
        let full = parse(&[]).unwrap().unwrap();
        assert_eq!((full.size, full.rounds), (4 << 30, 5));
        assert_eq!(full.only, Group::ALL);
        let smoke = parse(&["--smoke", "--rounds", "2"]).unwrap().unwrap();
        assert_eq!((smoke.size, smoke.rounds), (256 << 20, 2));
        assert_eq!(smoke.upgrade_gib, [1]);
    }

    #[test]
    fn values() {
        let o = parse(&[
            "--size",
            "2G",
            "--clients",
            "1, 8",
            "--only",
            "touch,ledger",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(o.size, 2 << 30);
        assert_eq!(o.clients, [1, 8]);
        assert_eq!(o.only, [Group::Touch, Group::Ledger]);
        assert!(parse(&["--help"]).unwrap().is_none());
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        assert!(parse(&["--size", "1.5K"]).unwrap_err().contains("--size"));
        assert!(parse(&["--size", "4M"]).unwrap_err().contains("at least"));
        assert!(parse(&["--only", "boot"]).unwrap_err().contains("boot"));
        assert!(parse(&["--rounds", "0"]).unwrap_err().contains("--rounds"));
        assert!(parse(&["--rounds"]).unwrap_err().contains("needs a value"));
        assert!(parse(&["--bench"]).unwrap_err().contains("unknown flag"));
    }
}
