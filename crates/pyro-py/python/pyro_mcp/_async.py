"""The asyncio SDK: :class:`AsyncPyro`."""

from __future__ import annotations

import asyncio
import functools
import os
from typing import Any, Awaitable, Callable, Optional, TypeVar, Union

from pyro_mcp._sdk import Pyro, VmManager

__all__ = ["AsyncPyro"]

T = TypeVar("T")


class AsyncPyro:
    """:class:`Pyro` for asyncio: every method is a coroutine with the same
    name, parameters and result.

    Calls run on the event loop's default executor with the GIL released,
    so many VMs work at once while the loop keeps serving other tasks.
    """

    def __init__(
        self,
        manager: Optional[VmManager] = None,
        *,
        base_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        max_active_vms: Optional[int] = None,
    ) -> None:
        self._sync = Pyro(
            manager, base_dir=base_dir, cache_dir=cache_dir, max_active_vms=max_active_vms
        )

    @property
    def sync(self) -> Pyro:
        """The synchronous client underneath."""
        return self._sync

    @property
    def manager(self) -> VmManager:
        return self._sync.manager

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self._sync, name)
        if name.startswith("_") or not callable(method):
            raise AttributeError(name)

        @functools.wraps(method)
        async def call(*args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, functools.partial(method, *args, **kwargs))

        return call
