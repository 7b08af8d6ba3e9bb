"""Clients and settings built once per container."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from botocore.config import Config

from fanout_core.providers.registry import ProviderRegistry
from fanout_core.settings import Settings

# the container's model providers (Lambda keeps a container's module state between invocations)
_providers = ProviderRegistry()


def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def s3() -> Any:
    # records are written from many threads at once: size the pool to match
    return boto3.client("s3", config=Config(max_pool_connections=64, retries={"mode": "standard"}))


def providers() -> ProviderRegistry:
    return _providers


@contextmanager
def using_providers(registry: ProviderRegistry) -> Iterator[ProviderRegistry]:
    """The handlers use ``registry`` until the block ends, then the one they had (the local runtime's run)."""
    global _providers
    previous, _providers = _providers, registry
    try:
        yield registry
    finally:
        _providers = previous


@functools.cache
def sfn() -> Any:
    # Plan asks whether the execution holding a job_id's lease still runs (DescribeExecution)
    return boto3.client("stepfunctions", config=Config(retries={"mode": "standard"}))


def bedrock() -> Any:
    # Plan looks up, and stops, the batch inference jobs an earlier run left running, and the join step those of its
    # own run the state machine did not see end: built when needed, not cached, so the local runtime's in-process
    # answers reach it in every run
    return boto3.client("bedrock", config=Config(retries={"mode": "standard"}))
