//! What the library can fail with. Every error has a [`ErrorKind`] (what
//! sort of failure it is, for programs) and may carry a [`Remedy`] (what
//! the caller can do about it). Messages are lowercase and name no front
//! end's flags or commands: each front end words the remedy its own way
//! (the CLI names its flags, the MCP server its tools and parameters).

use std::io;

/// The sort of failure, for callers that act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The workspace, VM, snapshot, service, shell or environment does not
    /// exist.
    NotFound,
    /// The request clashes with what exists or with the current state (a
    /// name in use, an output that exists, a workspace that is stopped).
    Conflict,
    /// The request itself is malformed or out of range.
    InvalidArgument,
    /// The host cannot do it now (no guest can boot, no capacity, the VM
    /// went away); retrying later or elsewhere may work.
    Unavailable,
    /// The guest refused or failed the request.
    Guest,
    /// A host tool or file operation failed.
    Internal,
}

/// What the caller can do about an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remedy {
    /// Start the (stopped) workspace first.
    StartWorkspace { workspace_id: String },
    /// Stop the (running) workspace first.
    StopWorkspace { workspace_id: String },
    /// Ask to overwrite the existing output.
    Overwrite,
    /// See which workspaces exist.
    ListWorkspaces,
    /// See the environment catalog.
    ListEnvironments,
    /// Install (or repair) the environment.
    PullEnvironment { environment: String },
    /// Run the command on the host instead, without isolation.
    AllowHostCompat,
    /// Create the workspace with this network policy.
    NetworkPolicy { policy: String },
}

/// What a `NotFound` did not find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    Workspace,
    Vm,
    Snapshot,
    Environment,
}

impl Entity {
    pub fn as_str(self) -> &'static str {
        match self {
            Entity::Workspace => "workspace",
            Entity::Vm => "vm",
            Entity::Snapshot => "snapshot",
            Entity::Environment => "environment",
        }
    }
}

fn not_found_message(entity: &Entity, id: &str) -> String {
    match entity {
        // The words the reference uses for these.
        Entity::Vm | Entity::Environment => format!("unknown {} {id:?}", entity.as_str()),
        _ => format!("no {} {id:?}", entity.as_str()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", not_found_message(.entity, .id))]
    NotFound { entity: Entity, id: String },

    #[error("{message}")]
    Conflict {
        message: String,
        remedy: Option<Remedy>,
    },

    #[error("{0}")]
    InvalidArgument(String),

    /// No guest can be booted here; nothing ran.
    #[error("guest boot is unavailable: {reason}\n  fix: {fix}")]
    GuestUnavailable {
        reason: String,
        fix: String,
        /// The caller could run the command on the host instead.
        host_compat: bool,
    },

    /// Too many VMs run already.
    #[error("{0}")]
    Capacity(String),

    #[error("the VM failed to start: {0}")]
    Boot(String),

    #[error("lost the VM: {0}")]
    VmLost(String),

    /// The guest refused or failed a request.
    #[error("{0}")]
    Guest(String),

    #[error("{0} is not supported yet")]
    Unsupported(&'static str),

    #[error("{tool} failed: {detail}")]
    Tool { tool: String, detail: String },

    #[error("environment {name}: {detail}")]
    Environment {
        name: String,
        detail: String,
        remedy: Option<Remedy>,
    },

    /// A registry refused or failed a request, sorted by what it means to
    /// the caller (`kind`).
    #[error("{reference}: {detail}")]
    Registry {
        reference: String,
        detail: String,
        kind: ErrorKind,
    },

    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::InvalidArgument(_) | Error::Unsupported(_) => ErrorKind::InvalidArgument,
            Error::GuestUnavailable { .. }
            | Error::Capacity(_)
            | Error::Boot(_)
            | Error::VmLost(_) => ErrorKind::Unavailable,
            Error::Guest(_) => ErrorKind::Guest,
            Error::Registry { kind, .. } => *kind,
            Error::Tool { .. } | Error::Environment { .. } | Error::Io { .. } => {
                ErrorKind::Internal
            }
        }
    }

    /// The message followed by each underlying cause (`a: b: c`), for front
    /// ends that print one line.
    pub fn with_causes(&self) -> String {
        let mut s = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(inner) = source {
            s.push_str(": ");
            s.push_str(&inner.to_string());
            source = inner.source();
        }
        s
    }

    pub fn remedy(&self) -> Option<Remedy> {
        match self {
            Error::NotFound { entity, .. } => match entity {
                Entity::Workspace => Some(Remedy::ListWorkspaces),
                Entity::Environment => Some(Remedy::ListEnvironments),
                _ => None,
            },
            Error::Conflict { remedy, .. } | Error::Environment { remedy, .. } => remedy.clone(),
            Error::GuestUnavailable {
                host_compat: true, ..
            } => Some(Remedy::AllowHostCompat),
            _ => None,
        }
    }

    pub(crate) fn not_found(entity: Entity, id: impl Into<String>) -> Error {
        Error::NotFound {
            entity,
            id: id.into(),
        }
    }

    pub(crate) fn conflict(message: impl Into<String>) -> Error {
        Error::Conflict {
            message: message.into(),
            remedy: None,
        }
    }

    pub(crate) fn conflict_with(message: impl Into<String>, remedy: Remedy) -> Error {
        Error::Conflict {
            message: message.into(),
            remedy: Some(remedy),
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidArgument(message.into())
    }

    /// An agent reply that does not answer the request.
    pub(crate) fn unexpected(reply: &impl std::fmt::Debug) -> Error {
        Error::Guest(format!("unexpected reply {reply:?}"))
    }
}

/// Attaches what was being done to an I/O error.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: context(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_remedies() {
        let e = Error::not_found(Entity::Workspace, "ab12");
        assert_eq!(e.kind(), ErrorKind::NotFound);
        assert_eq!(e.remedy(), Some(Remedy::ListWorkspaces));
        assert_eq!(e.to_string(), "no workspace \"ab12\"");
        let e = Error::not_found(Entity::Environment, "debian:99");
        assert_eq!(e.to_string(), "unknown environment \"debian:99\"");
        assert_eq!(e.remedy(), Some(Remedy::ListEnvironments));
        assert_eq!(
            Error::not_found(Entity::Vm, "x").to_string(),
            "unknown vm \"x\""
        );
        let e = Error::conflict_with("x exists", Remedy::Overwrite);
        assert_eq!(
            (e.kind(), e.remedy()),
            (ErrorKind::Conflict, Some(Remedy::Overwrite))
        );
        assert_eq!(Error::invalid("bad").kind(), ErrorKind::InvalidArgument);
        assert_eq!(Error::VmLost("gone".into()).kind(), ErrorKind::Unavailable);
    }
}
