//! How gmemctl's command line names VMs and memory files.
//!
//! - A VM is its UUID (the 8-4-4-4-12 hex form) or else its name:
//!   [`parse_vm_selector`].
//! - A file is `VM/NAME`, the file `NAME` of that VM's namespace, or a bare
//!   `NAME`, a file of the operators' namespace (where `gmemctl create`
//!   puts files): [`FileArg`]. File names cannot contain `/`, so the split
//!   is never ambiguous.
//!
//! Each parser returns a typed error whose text clap prints after
//! "invalid value ... for ...".

use std::fmt;
use std::str::FromStr;

use gmem_protocol::wire::{FileRef, Name, Uuid, VmSelector, WireError};

/// Why a VM or file argument is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not a UUID, and not a valid name either.
    #[error("{text:?} is neither a VM UUID nor a VM name: {reason}")]
    Vm {
        /// The argument.
        text: String,
        /// Why it is not a name (in the message: clap prints no sources).
        reason: WireError,
    },
    /// Not a UUID of the 8-4-4-4-12 hex form.
    #[error("invalid UUID {0:?}: expected the 8-4-4-4-12 hex form")]
    Uuid(String),
    /// The file name part is not a valid name.
    #[error("{text:?}: invalid file name {name:?}: {reason}")]
    FileName {
        /// The whole argument.
        text: String,
        /// The name part.
        name: String,
        /// What is wrong with it (in the message: clap prints no sources).
        reason: WireError,
    },
    /// `/NAME` or `VM/`.
    #[error("{0:?}: expected VM/NAME (a file of that VM) or NAME (an operators' file)")]
    EmptyPart(String),
    /// `a/b/c`.
    #[error("{0:?} has more than one '/': expected VM/NAME or NAME")]
    TooManySlashes(String),
    /// A `VM/NAME` where only an operators' `NAME` fits (`create`).
    #[error(
        "{0:?}: files are created in the operators' namespace; create NAME, \
         then `gmemctl transfer NAME --to VM` to give it to a VM"
    )]
    ScopedCreate(String),
}

/// Parses a VM UUID.
///
/// # Errors
/// [`AddressError::Uuid`].
pub fn parse_uuid(text: &str) -> Result<Uuid, AddressError> {
    Uuid::parse(text).ok_or_else(|| AddressError::Uuid(text.to_owned()))
}

/// Parses a VM by UUID (the 8-4-4-4-12 form) or else by name.
///
/// # Errors
/// [`AddressError::Vm`] when the text is neither.
pub fn parse_vm_selector(text: &str) -> Result<VmSelector, AddressError> {
    match Uuid::parse(text) {
        Some(uuid) => Ok(VmSelector::Uuid(uuid)),
        None => Name::new(text)
            .map(VmSelector::Name)
            .map_err(|reason| AddressError::Vm {
                text: text.to_owned(),
                reason,
            }),
    }
}

/// Parses the name of a new operators' file (`gmemctl create NAME`): a
/// plain name, with a hint when it looks like `VM/NAME`.
///
/// # Errors
/// [`AddressError::ScopedCreate`] for `VM/NAME`,
/// [`AddressError::FileName`] for an invalid name.
pub fn parse_new_file_name(text: &str) -> Result<Name, AddressError> {
    match FileArg::from_str(text)? {
        FileArg { vm: None, name } => Ok(name),
        FileArg { vm: Some(_), .. } => Err(AddressError::ScopedCreate(text.to_owned())),
    }
}

/// A memory file as the command line names it: `VM/NAME` or `NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileArg {
    /// The VM whose namespace holds the file; `None`: the operators'.
    pub vm: Option<VmSelector>,
    /// The file's name in that namespace.
    pub name: Name,
}

impl FileArg {
    /// The operators' file `name`.
    pub fn operators(name: Name) -> Self {
        FileArg { vm: None, name }
    }

    /// File `name` of VM `vm`.
    pub fn in_vm(vm: VmSelector, name: Name) -> Self {
        FileArg { vm: Some(vm), name }
    }

    /// Whether the file is addressed in a VM's namespace, which needs the
    /// daemon's feature `VM_SCOPE`.
    pub fn is_scoped(&self) -> bool {
        self.vm.is_some()
    }

    /// The file as a request names it.
    ///
    /// gmemctl talks to gmemd as a control session, whose own namespace is
    /// the operators'. An operators' file is therefore sent as a plain name
    /// ([`FileRef::own`]), which a daemon without `VM_SCOPE` understands
    /// too; a VM's file needs the scoped form.
    pub fn to_ref(&self) -> FileRef {
        match &self.vm {
            None => FileRef::own(self.name.clone()),
            Some(vm) => FileRef::vm(vm.clone(), self.name.clone()),
        }
    }

    /// The file as a TRANSFER names it: always explicitly scoped, since a
    /// transfer is only understood with `VM_SCOPE`.
    pub fn to_scoped_ref(&self) -> FileRef {
        match &self.vm {
            None => FileRef::operators(self.name.clone()),
            Some(vm) => FileRef::vm(vm.clone(), self.name.clone()),
        }
    }
}

impl FromStr for FileArg {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, AddressError> {
        let file_name = |name: &str| {
            Name::new(name).map_err(|reason| AddressError::FileName {
                text: text.to_owned(),
                name: name.to_owned(),
                reason,
            })
        };
        let mut parts = text.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, _) => Ok(FileArg::operators(file_name(name)?)),
            (Some(""), Some(_), None) | (Some(_), Some(""), None) => {
                Err(AddressError::EmptyPart(text.to_owned()))
            }
            (Some(vm), Some(name), None) => {
                let vm = parse_vm_selector(vm)?;
                Ok(FileArg::in_vm(vm, file_name(name)?))
            }
            _ => Err(AddressError::TooManySlashes(text.to_owned())),
        }
    }
}

/// `VM/NAME` or `NAME`, as typed.
impl fmt::Display for FileArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.vm {
            None => write!(f, "{}", self.name),
            Some(vm) => write!(f, "{vm}/{}", self.name),
        }
    }
}

/// clap's `value_parser` for a [`FileArg`].
///
/// # Errors
/// As [`FileArg::from_str`].
pub fn parse_file(text: &str) -> Result<FileArg, AddressError> {
    text.parse()
}

#[cfg(test)]
mod tests {
    use gmem_protocol::wire::Scope;

    use super::*;

    const UUID: &str = "12345678-9abc-def0-1234-56789abcdef0";

    fn name(text: &str) -> Name {
        Name::new(text).unwrap()
    }

    #[test]
    fn vm_is_a_uuid_first_then_a_name() {
        assert_eq!(
            parse_vm_selector(UUID).unwrap(),
            VmSelector::Uuid(Uuid::parse(UUID).unwrap())
        );
        assert_eq!(
            parse_vm_selector("web1").unwrap(),
            VmSelector::Name(name("web1"))
        );
        // Almost a UUID is a name.
        assert_eq!(
            parse_vm_selector("12345678-9abc").unwrap(),
            VmSelector::Name(name("12345678-9abc"))
        );
        let err = parse_vm_selector("a b").unwrap_err();
        assert!(matches!(err, AddressError::Vm { .. }));
        assert!(err.to_string().contains("neither a VM UUID nor a VM name"));
        assert!(parse_uuid("web1").is_err());
    }

    #[test]
    fn bare_name_is_an_operators_file_sent_plain() {
        let file: FileArg = "pool.0".parse().unwrap();
        assert_eq!(file, FileArg::operators(name("pool.0")));
        assert!(!file.is_scoped());
        assert_eq!(file.to_ref().scope, Scope::Own);
        assert_eq!(file.to_scoped_ref().scope, Scope::Operators);
        assert_eq!(file.to_string(), "pool.0");
    }

    #[test]
    fn vm_slash_name_is_that_vms_file() {
        let file: FileArg = "web1/web1.ram".parse().unwrap();
        assert_eq!(
            file,
            FileArg::in_vm(VmSelector::Name(name("web1")), name("web1.ram"))
        );
        assert!(file.is_scoped());
        assert_eq!(file.to_ref(), file.to_scoped_ref());
        assert_eq!(
            file.to_ref(),
            FileRef::vm(VmSelector::Name(name("web1")), name("web1.ram"))
        );
        assert_eq!(file.to_string(), "web1/web1.ram");

        let file: FileArg = format!("{UUID}/ram").parse().unwrap();
        assert_eq!(file.vm, Some(VmSelector::Uuid(Uuid::parse(UUID).unwrap())));
        assert_eq!(file.to_string(), format!("{UUID}/ram"));
    }

    #[test]
    fn malformed_files_say_what_is_wrong() {
        for (text, want) in [
            ("", "invalid file name"),
            ("/ram", "expected VM/NAME"),
            ("vm/", "expected VM/NAME"),
            ("/", "expected VM/NAME"),
            ("a/b/c", "more than one '/'"),
            ("vm/.hidden", "starts with '.'"),
            ("vm/a b", "characters outside"),
            ("a b/ram", "neither a VM UUID nor a VM name"),
            (&"x".repeat(64), "longer than 63 bytes"),
        ] {
            let err = text.parse::<FileArg>().unwrap_err();
            assert!(err.to_string().contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn create_takes_only_operators_names() {
        assert_eq!(parse_new_file_name("ram0").unwrap(), name("ram0"));
        let err = parse_new_file_name("vm1/ram0").unwrap_err();
        assert!(matches!(err, AddressError::ScopedCreate(_)));
        assert!(err.to_string().contains("gmemctl transfer NAME --to VM"));
        assert!(parse_new_file_name("bad name")
            .unwrap_err()
            .to_string()
            .contains("characters outside"));
    }
}
