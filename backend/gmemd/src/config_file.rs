//! The optional config file (`gmemd --config FILE`, TOML): what ties VMs to
//! their principals, per VM where they differ, and the quotas. Flags given
//! on the command line win over the file.
//!
//! ```toml
//! principal = "uid+cgroup"
//! cgroup-pattern = "/machine.slice/machine-qemu*{vm}.scope"
//!
//! [quotas]
//! files = 256
//! memory = "64G"
//! connections = 64
//!
//! [vm.db1]
//! uid = 107          # only this uid may be the VM's first lease
//! cgroup = "/kubepods.slice/*pod1234*"
//!
//! [memory]
//! pool = ["4Gx2", "1G:hugetlb-2mx4"]   # warm pools, as --pool
//! prefault-threads = 4
//! numa-node = 0
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gmem_protocol::wire::Name;
use serde::Deserialize;

use crate::pool::PoolSpec;
use crate::principal::{PrincipalMode, VmPatterns};
use crate::size::parse_size;

/// Why the config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// It cannot be read.
    #[error("cannot read the config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// It is not what gmemd expects.
    #[error("config file {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its place in the file.
        reason: String,
    },
}

/// What the file says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigFile {
    /// `principal`.
    pub principal: Option<PrincipalMode>,
    /// `cgroup-pattern`.
    pub cgroup_pattern: Option<String>,
    /// `label-pattern`.
    pub label_pattern: Option<String>,
    /// `[quotas] files`.
    pub quota_files: Option<usize>,
    /// `[quotas] memory`, in bytes.
    pub quota_memory: Option<u64>,
    /// `[quotas] connections`.
    pub quota_connections: Option<usize>,
    /// `[vm.NAME]` tables.
    pub vms: BTreeMap<Name, VmPatterns>,
    /// `[memory] pool`.
    pub pools: Vec<PoolSpec>,
    /// `[memory] prefault-threads`.
    pub prefault_threads: Option<usize>,
    /// `[memory] numa-node`.
    pub numa_node: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    principal: Option<String>,
    cgroup_pattern: Option<String>,
    label_pattern: Option<String>,
    #[serde(default)]
    quotas: RawQuotas,
    #[serde(default)]
    vm: BTreeMap<String, RawVm>,
    #[serde(default)]
    memory: RawMemory,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMemory {
    #[serde(default)]
    pool: Vec<String>,
    prefault_threads: Option<usize>,
    numa_node: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotas {
    files: Option<usize>,
    memory: Option<String>,
    connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    uid: Option<u32>,
    cgroup: Option<String>,
    label: Option<String>,
}

impl ConfigFile {
    /// Reads and checks `path`.
    ///
    /// # Errors
    /// [`ConfigFileError`], naming the file and what is wrong.
    pub fn load(path: &Path) -> Result<Self, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|reason| ConfigFileError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the text of a config file.
    ///
    /// # Errors
    /// What is wrong, as text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let principal = raw
            .principal
            .map(|p| p.parse::<PrincipalMode>())
            .transpose()?;
        let quota_memory = raw
            .quotas
            .memory
            .map(|m| parse_size(&m).map_err(|e| format!("quotas.memory: {e}")))
            .transpose()?;
        let vms = raw
            .vm
            .into_iter()
            .map(|(name, vm)| {
                let name = Name::new(&name).map_err(|e| format!("[vm.{name}]: {e}"))?;
                Ok((
                    name,
                    VmPatterns {
                        uid: vm.uid,
                        cgroup: vm.cgroup,
                        label: vm.label,
                    },
                ))
            })
            .collect::<Result<_, String>>()?;
        let pools = raw
            .memory
            .pool
            .iter()
            .map(|p| {
                p.parse::<PoolSpec>()
                    .map_err(|e| format!("memory.pool: {e}"))
            })
            .collect::<Result<_, String>>()?;
        Ok(ConfigFile {
            principal,
            cgroup_pattern: raw.cgroup_pattern,
            label_pattern: raw.label_pattern,
            quota_files: raw.quotas.files,
            quota_memory,
            quota_connections: raw.quotas.connections,
            vms,
            pools,
            prefault_threads: raw.memory.prefault_threads,
            numa_node: raw.memory.numa_node,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let f = ConfigFile::parse(
            r#"
principal = "uid+cgroup+label"
cgroup-pattern = "/machine.slice/*{vm}.scope"
label-pattern = "system_u:system_r:svirt_t:s0:*"
[quotas]
files = 10
memory = "1.5G"
connections = 3
[vm.db1]
uid = 107
cgroup = "/pods/db1/*"
[memory]
pool = ["2Gx3", "64M:secretx1"]
prefault-threads = 3
numa-node = 0
"#,
        )
        .unwrap();
        assert_eq!(
            f.principal,
            Some(PrincipalMode {
                cgroup: true,
                label: true
            })
        );
        assert_eq!(f.quota_files, Some(10));
        assert_eq!(f.quota_memory, Some(3 << 29));
        assert_eq!(f.quota_connections, Some(3));
        let db1 = &f.vms[&Name::new("db1").unwrap()];
        assert_eq!(db1.cgroup.as_deref(), Some("/pods/db1/*"));
        assert_eq!(db1.label, None);
        assert_eq!(db1.uid, Some(107));
        assert_eq!(f.pools.len(), 2);
        assert_eq!((f.pools[0].size, f.pools[0].count), (2 << 30, 3));
        assert_eq!((f.prefault_threads, f.numa_node), (Some(3), Some(0)));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, needle) in [
            ("principal = \"cgroup\"", "starts with uid"),
            ("prinicpal = \"uid\"", "prinicpal"),
            ("[quotas]\nmemory = \"lots\"", "quotas.memory"),
            ("[vm.\"a b\"]\ncgroup = \"x\"", "[vm.a b]"),
            ("[vm.a]\ncgroups = \"x\"", "cgroups"),
            ("[memory]\npool = [\"4G\"]", "memory.pool"),
        ] {
            let err = ConfigFile::parse(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
        assert_eq!(ConfigFile::parse("").unwrap(), ConfigFile::default());
    }
}
