"""fanout on one machine: the Python API, the CLI and the local runtime (never shipped to Lambda).

import fanout
result = fanout.run({"pattern": "voting", ...}, model="sim", out="out")
rows = result.rows()  # pandas.DataFrame(rows), if you use pandas
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any

# in a checkout the Lambda code lives in lambdas/ (the asset root): make it importable here as it is there;
# an installed package has fanout_core next to fanout
_LAMBDAS = Path(__file__).resolve().parent.parent / "lambdas"
if (_LAMBDAS / "fanout_core").is_dir() and str(_LAMBDAS) not in sys.path:
    sys.path.insert(0, str(_LAMBDAS))


def _version() -> str:
    try:
        return metadata.version("fanout")
    except metadata.PackageNotFoundError:  # a checkout: the version pyproject.toml declares
        import tomllib

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        return str(tomllib.loads(pyproject.read_text())["project"]["version"])


__version__ = _version()

_API = ("run", "validate", "load", "RunResult", "ItemResult", "Plan", "Job", "FanoutError")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    # the API is imported on first use, so `fanout --version` and the CLI's start stay quick
    if name in _API:
        from fanout import api

        return getattr(api, name)
    raise AttributeError(f"module 'fanout' has no attribute {name!r}")
