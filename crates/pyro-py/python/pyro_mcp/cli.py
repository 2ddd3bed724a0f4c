"""The ``pyro`` console script: runs the ``pyro`` binary bundled in this package."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def binary() -> Path:
    """The bundled ``pyro`` executable (``PYRO_BIN`` overrides it)."""
    override = os.environ.get("PYRO_BIN")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent / "_bin" / "pyro"


def main() -> None:
    path = binary()
    if not os.access(path, os.X_OK):
        sys.stderr.write(f"[error] the pyro binary is missing from this installation: {path}\n")
        raise SystemExit(1)
    os.execv(str(path), [str(path), *sys.argv[1:]])


if __name__ == "__main__":
    main()
