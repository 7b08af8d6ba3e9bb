"""Node.js for the tests that start jsii (the CDK synth), and jsii's banner about its version kept out of their output.

jsii checks the Node.js release each time it starts. For one past its end of life it writes a banner to stderr
that its Python client cannot parse, and so echoes line by line as byte strings (b'!!  Node 20 is end-of-life
...  !!\\n'). `make test` says in one line which Node.js it found and which ones fanout is tested on, so the banner
is silenced with the variables jsii's bundled runtime reads (its checkNode): JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION
takes a list of major versions, the deprecated and untested ones any value. A known-broken release still warns.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import MutableMapping

SILENCED = (
    "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION",
    "JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION",
    "JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION",
)


def node_major() -> int | None:
    """The major version of the `node` on PATH, or None without one."""
    node = shutil.which("node")
    if node is None:
        return None
    found = subprocess.run([node, "-p", "process.versions.node"], capture_output=True, text=True, timeout=60, check=True)
    return int(found.stdout.split(".")[0])


def quiet_jsii(environ: MutableMapping[str, str] = os.environ) -> None:
    """Silence jsii's Node.js version banner for the processes started from here on (jsii reads it as it starts)."""
    major = node_major()
    if major is None:
        return
    environ.setdefault(SILENCED[0], str(major))
    for name in SILENCED[1:]:
        environ.setdefault(name, "1")
