"""Synthesis for the infrastructure tests: the stack as app.py builds it, from cdk.json context.

A module of its own (not conftest) so that test modules can import it by a name no other test folder uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import cx_api

from infra.config import FanoutConfig
from infra.stack import FanoutStack

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Synthesized:
    stack: FanoutStack
    assembly: cx_api.CloudAssembly
    outdir: Path

    @property
    def template_json(self) -> dict[str, Any]:
        template: dict[str, Any] = self.assembly.get_stack_by_name(self.stack.stack_name).template
        return template


def cdk_json_context() -> dict[str, Any]:
    context: dict[str, Any] = json.loads((REPO / "cdk.json").read_text())["context"]
    return context


def synthesize(outdir: Path, *, bundle: bool, **overrides: Any) -> Synthesized:
    """Synthesize FanoutStack into outdir; without bundle the Lambda asset is neither built nor staged."""
    context = {**cdk_json_context(), **overrides}
    if not bundle:
        # an empty list bundles no stack: the asset gets a source hash, and these tests take seconds, not a minute
        context["aws:cdk:bundling-stacks"] = []
    app = cdk.App(context=context, outdir=str(outdir))
    config = FanoutConfig.from_node(app.node)
    stack = FanoutStack(app, config.stack_name, config=config)
    return Synthesized(stack=stack, assembly=app.synth(), outdir=outdir)
