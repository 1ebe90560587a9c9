"""restic --repo values per provider, in Ark GA's forms (reference §3.10), plus arkd's local provider."""

from __future__ import annotations

import pytest

from arkd.api import Config, repo_identifier


def _config(name: str, restic_location: str | None, **settings: str) -> Config:
    return Config.from_obj(
        {
            "metadata": {"name": "default", "namespace": "heptio-ark"},
            "backupStorageProvider": {
                "name": name,
                "bucket": "backups",
                "resticLocation": restic_location,
                "config": settings,
            },
        }
    )


@pytest.mark.parametrize(
    ("provider", "location", "settings", "expected"),
    [
        # Ark GA config_test.go examples.
        ("aws", "bucket/prefix", {"s3Url": "alternate-url"}, "s3:alternate-url/bucket/prefix/repo-1"),
        ("aws", "bucket", {"region": "us-west-2"}, "s3:s3-us-west-2.amazonaws.com/bucket/repo-1"),
        ("azure", "bucket/prefix", {}, "azure:bucket:/prefix/repo-1"),
        ("azure", "bucket", {}, "azure:bucket:/repo-1"),
        ("gcp", "bucket-2/prefix-2", {}, "gs:bucket-2:/prefix-2/repo-1"),
        ("gcp", "bucket-2", {}, "gs:bucket-2:/repo-1"),
        # minio and other S3-compatible stores.
        (
            "aws",
            "restic",
            {"s3Url": "http://minio.heptio-ark.svc:9000"},
            "s3:http://minio.heptio-ark.svc:9000/restic/repo-1",
        ),
        ("aws", "restic", {"s3Url": "http://127.0.0.1:9000/"}, "s3:http://127.0.0.1:9000/restic/repo-1"),
        # No region: the global endpoint; us-east-1 has no dashed endpoint, so it uses the global one.
        ("aws", "bucket/a/b", {}, "s3:s3.amazonaws.com/bucket/a/b/repo-1"),
        ("aws", "bucket", {"region": "us-east-1"}, "s3:s3.amazonaws.com/bucket/repo-1"),
        # Stray slashes do not produce empty path segments.
        (
            "aws",
            "/bucket/prefix/",
            {"region": "eu-west-1"},
            "s3:s3-eu-west-1.amazonaws.com/bucket/prefix/repo-1",
        ),
        ("gcp", "bucket/", {}, "gs:bucket:/repo-1"),
        # arkd's local provider: a directory.
        ("local", "/var/lib/ark/restic", {}, "/var/lib/ark/restic/repo-1"),
        ("local", "/var/lib/ark/restic/", {}, "/var/lib/ark/restic/repo-1"),
        ("local", "relative/dir", {}, "relative/dir/repo-1"),
    ],
)
def test_repo_identifier(provider: str, location: str, settings: dict[str, str], expected: str) -> None:
    assert repo_identifier(_config(provider, location, **settings), "repo-1") == expected


@pytest.mark.parametrize("location", [None, "", "  ", "/"])
def test_empty_restic_location_means_restic_is_disabled(location: str | None) -> None:
    with pytest.raises(ValueError, match=r"restic is disabled: .*resticLocation is empty"):
        repo_identifier(_config("aws", location), "ns")


def test_unknown_provider_is_refused_with_the_supported_ones() -> None:
    with pytest.raises(ValueError, match=r"'ibm'.*use one of aws, azure, gcp, local"):
        repo_identifier(_config("ibm", "bucket"), "ns")


def test_namespace_is_required() -> None:
    with pytest.raises(ValueError, match="volume namespace"):
        repo_identifier(_config("aws", "bucket"), "")
