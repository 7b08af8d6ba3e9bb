"""fanout on one machine: the CLI and the local runtime (never shipped to Lambda)."""

import sys
from pathlib import Path

# the Lambda code lives in lambdas/ (the asset root); make it importable here as it is there
_LAMBDAS = str(Path(__file__).resolve().parent.parent / "lambdas")
if _LAMBDAS not in sys.path:
    sys.path.insert(0, _LAMBDAS)
