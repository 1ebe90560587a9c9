"""Fixtures shared by integration tests of controllers that read and write a backup bucket."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from arkd.storage import make_store
from tests.support.bucket import Bucket
from tests.support.moto import MotoServer

Obj = dict[str, Any]

# Credentials from the environment would win over the moto ones.
_AMBIENT_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")


@pytest.fixture(params=["local", "s3"])
async def bucket(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Bucket]:
    """A fresh bucket: a moto S3 bucket, or a directory for the local provider."""
    if request.param == "s3":
        s3: MotoServer = request.getfixturevalue("s3")
        for var in _AMBIENT_AWS:
            monkeypatch.delenv(var, raising=False)
        for var, value in s3.env().items():
            monkeypatch.setenv(var, value)
        name = f"arkd-{secrets.token_hex(6)}"
        s3.make_bucket(name)
        provider: Obj = {"name": "aws", "bucket": name, "config": s3.store_config()}
    else:
        (tmp_path / "ark-backups").mkdir()
        provider = {"name": "local", "bucket": "ark-backups", "config": {"path": str(tmp_path)}}
    store = make_store(provider["name"], provider["bucket"], provider["config"])
    try:
        yield Bucket(provider, store)
    finally:
        await store.close()
