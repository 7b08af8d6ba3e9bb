"""What `make test` needs of the machine: Node.js, said in one line when it is missing; jsii's banner kept out."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
from cdk_synth import REPO

from tests.node_env import SILENCED, node_major, quiet_jsii

SYNTH = "import aws_cdk; app = aws_cdk.App(); aws_cdk.Stack(app, 'S'); app.synth()"


def test_make_test_without_node_stops_at_once_with_one_line() -> None:
    # Given a PATH on which there is no node (nor npm)
    make = shutil.which("make")
    assert make is not None
    env = {"PATH": "/nonexistent", "HOME": os.environ.get("HOME", "/tmp")}

    # When make test starts
    started = time.monotonic()
    done = subprocess.run([make, "test"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)

    # Then it stops before installing or collecting anything, with one line naming the versions it needs
    assert done.returncode != 0
    assert time.monotonic() - started < 10
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "make test needs Node.js 22 or 24" in lines[0] and "Node 20 is end-of-life" in lines[0]
    assert done.stdout == ""


def test_jsii_prints_no_node_version_banner_in_the_tests() -> None:
    # Given the environment the tests run in (tests/conftest.py quiets jsii before any CDK import)
    quieted = dict(os.environ)

    # When a process starts jsii and synthesizes a stack
    done = subprocess.run([sys.executable, "-c", SYNTH], env=quieted, capture_output=True, text=True, timeout=120)

    # Then nothing reaches the output as a byte string, nor the banner in any form
    assert done.returncode == 0, done.stderr
    assert "b'" not in done.stderr and "!!" not in done.stderr, done.stderr


def test_without_the_settings_an_end_of_life_node_would_print_the_banner() -> None:
    # the control for the test above: on a Node.js that jsii calls end-of-life, the banner is there without them
    major = node_major()
    if major is None or major >= 22:
        pytest.skip(f"Node.js {major} is not end-of-life for jsii: there is no banner to silence")
    bare = {k: v for k, v in os.environ.items() if k not in SILENCED}
    done = subprocess.run([sys.executable, "-c", SYNTH], env=bare, capture_output=True, text=True, timeout=120)
    assert f"Node {major} is end-of-life" in done.stderr

    # and quiet_jsii's settings alone take it away
    quiet_jsii(bare)
    again = subprocess.run([sys.executable, "-c", SYNTH], env=bare, capture_output=True, text=True, timeout=120)
    assert "!!" not in again.stderr, again.stderr
