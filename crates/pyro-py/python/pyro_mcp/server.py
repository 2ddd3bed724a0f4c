"""The MCP server, from Python: ``create_server(profile=...).run()``."""

from __future__ import annotations

import os
from typing import List, Literal, Optional, Sequence, Union

from pyro_mcp._sdk import VmManager
from pyro_mcp.errors import InvalidArgumentError

__all__ = ["PyroMcpServer", "create_server", "main"]

Profile = Literal["vm-run", "workspace-core", "workspace-full"]
PROFILES = ("vm-run", "workspace-core", "workspace-full")


class PyroMcpServer:
    """pyro's MCP server (the same one as ``pyro mcp serve``), not yet serving."""

    def __init__(
        self,
        manager: VmManager,
        profile: Profile,
        allow_host_paths: Sequence[Union[str, "os.PathLike[str]"]],
        allow_host_compat: bool,
    ) -> None:
        self.manager = manager
        self.profile = profile
        self.allow_host_paths: List[str] = [os.fspath(p) for p in allow_host_paths]
        self.allow_host_compat = allow_host_compat

    def run(self, transport: Literal["stdio"] = "stdio") -> None:
        """Serves MCP on stdin/stdout until the client goes away."""
        if transport != "stdio":
            raise InvalidArgumentError(
                f"transport {transport!r}: only stdio is served from Python "
                "(`pyro mcp serve --http ADDR` serves streamable HTTP)"
            )
        self.manager._native.serve_stdio(
            self.profile, self.allow_host_paths, self.allow_host_compat
        )


def create_server(
    manager: Optional[VmManager] = None,
    *,
    profile: Profile = "workspace-full",
    allow_host_paths: Sequence[Union[str, "os.PathLike[str]"]] = (),
    allow_host_compat: bool = False,
) -> PyroMcpServer:
    """pyro's MCP server with the tools of ``profile``.

    Tools may use host paths (seeds, sync sources, secret files, exports)
    only inside ``allow_host_paths`` (or ``PYRO_MCP_HOST_PATHS``,
    ``:``-separated); ``vm_run`` may fall back to the host only with
    ``allow_host_compat=True``.
    """
    if profile not in PROFILES:
        raise InvalidArgumentError(
            f"unknown profile {profile!r}; use vm-run, workspace-core or workspace-full"
        )
    roots = list(allow_host_paths)
    if not roots and os.environ.get("PYRO_MCP_HOST_PATHS"):
        roots = [p for p in os.environ["PYRO_MCP_HOST_PATHS"].split(":") if p]
    return PyroMcpServer(manager or VmManager(), profile, roots, allow_host_compat)


def main() -> None:
    """Serves MCP on stdio with the default profile (workspace-full)."""
    create_server().run()


if __name__ == "__main__":
    main()
