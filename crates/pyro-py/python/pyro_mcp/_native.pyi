from typing import Callable, Dict, List, Optional

__version__: str
CATALOG_VERSION: str

class Native:
    def __init__(
        self,
        program: str,
        home: Optional[str] = None,
        environment_cache: Optional[str] = None,
        max_running_vms: Optional[int] = None,
    ) -> None: ...
    def paths(self) -> Dict[str, str]: ...
    def call(
        self, method: str, args: str, progress: Optional[Callable[[str, str], None]] = None
    ) -> str: ...
    def serve_stdio(
        self, profile: str, allow_host_paths: List[str], allow_host_compat: bool
    ) -> None: ...
