//! Namespaces: every file lives in its VM's namespace or in the operators',
//! so nobody can pre-create a name another VM will use (DESIGN invariant 6).

use std::fmt;

use gmem_protocol::wire::{Name, Uuid};

/// A namespace of file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// The operators' files: `gmemctl create`, pools, templates.
    Operators,
    /// A VM's files, by its UUID.
    Vm(Uuid),
}

/// A file's key: its namespace and its name there.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FileKey {
    /// The namespace.
    pub space: Space,
    /// The name.
    pub name: Name,
}

impl FileKey {
    /// `name` in VM `uuid`'s namespace.
    pub fn vm(uuid: Uuid, name: Name) -> Self {
        FileKey {
            space: Space::Vm(uuid),
            name,
        }
    }

    /// `name` in the operators' namespace.
    pub fn operators(name: Name) -> Self {
        FileKey {
            space: Space::Operators,
            name,
        }
    }

    /// The VM whose file it is, if any.
    pub fn vm_uuid(&self) -> Option<Uuid> {
        match self.space {
            Space::Vm(uuid) => Some(uuid),
            Space::Operators => None,
        }
    }
}

impl fmt::Display for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.space {
            Space::Operators => write!(f, "{}", self.name),
            Space::Vm(uuid) => write!(f, "{uuid}/{}", self.name),
        }
    }
}
