use std::io;

/// Everything the library can fail with. Messages are lowercase and say
/// what to do where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown environment {0:?}; `pyro env list` shows the catalog")]
    UnknownEnvironment(String),

    #[error("{0}")]
    InvalidArgument(String),

    /// No guest can be booted here; nothing ran.
    #[error(
        "guest boot is unavailable: {reason}\n  fix: {remedy}\n  (or pass --allow-host-compat to run the command on the host, without isolation)"
    )]
    GuestUnavailable { reason: String, remedy: String },

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
    Environment { name: String, detail: String },

    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
