"""pyro: disposable, isolated Linux sandboxes that are real microVMs.

>>> from pyro_mcp import Pyro
>>> Pyro().run_in_vm(environment="debian:12", command="git --version")["stdout"]
'git version 2.39.5\\n'

:class:`Pyro` is the synchronous SDK, :class:`AsyncPyro` the same for
asyncio, :func:`create_server` the MCP server, and :mod:`pyro_mcp.errors`
the exceptions. The ``pyro`` command ships in this package too.
"""

from pyro_mcp import errors
from pyro_mcp._async import AsyncPyro
from pyro_mcp._native import __version__
from pyro_mcp._sdk import Command, Pyro, VmManager
from pyro_mcp.errors import PyroError
from pyro_mcp.server import create_server

__all__ = [
    "AsyncPyro",
    "Command",
    "Pyro",
    "PyroError",
    "VmManager",
    "__version__",
    "create_server",
    "errors",
]
