"""Clients and settings built once per container."""

from __future__ import annotations

import functools
from typing import Any

import boto3
from botocore.config import Config

from fanout_core.settings import Settings


def settings() -> Settings:
    return Settings.from_env()


@functools.cache
def s3() -> Any:
    # records are written from many threads at once: size the pool to match
    return boto3.client("s3", config=Config(max_pool_connections=64, retries={"mode": "standard"}))
