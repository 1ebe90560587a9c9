"""Restore order (Config.resourcePriorities) and the resources a restore never creates."""

from __future__ import annotations

import pytest

from arkd.backup.filters import IncludesExcludes, ResourceResolver
from arkd.kube.resource import Resource
from arkd.restore.ordering import (
    DEFAULT_RESOURCE_PRIORITIES,
    NON_RESTORABLE_RESOURCES,
    match_priority,
    non_restorable_errors,
    prioritize_resources,
    with_non_restorable_excluded,
)

AVAILABLE = [
    "pods",
    "services",
    "nodes",
    "events",
    "events.events.k8s.io",
    "limitranges",
    "configmaps",
    "secrets",
    "serviceaccounts",
    "persistentvolumeclaims",
    "persistentvolumes",
    "namespaces",
    "deployments.apps",
    "deployments.extensions",
    "customresourcedefinitions.apiextensions.k8s.io",
    "storageclasses.storage.k8s.io",
    "backups.ark.heptio.com",
    "restores.ark.heptio.com",
    "schedules.ark.heptio.com",
    "podvolumebackups.ark.heptio.com",
    "podvolumerestores.ark.heptio.com",
    "deletebackuprequests.ark.heptio.com",
    "downloadrequests.ark.heptio.com",
    "resticrepositories.ark.heptio.com",
]


def test_default_priorities_then_alphabetical_without_non_restorables() -> None:
    assert prioritize_resources(AVAILABLE) == [
        # Ark 0.9's defaults, pods last so restic restores start before controllers adopt them
        "namespaces",
        "persistentvolumes",
        "persistentvolumeclaims",
        "secrets",
        "configmaps",
        "serviceaccounts",
        "limitranges",
        "pods",
        # the rest by group-resource name
        "customresourcedefinitions.apiextensions.k8s.io",
        "deployments.apps",
        "deployments.extensions",
        "resticrepositories.ark.heptio.com",
        "schedules.ark.heptio.com",
        "services",
        "storageclasses.storage.k8s.io",
    ]
    assert DEFAULT_RESOURCE_PRIORITIES[-1] == "pods"


def test_custom_priorities_match_plain_and_qualified_names_and_skip_unknown_ones() -> None:
    order = prioritize_resources(
        AVAILABLE,
        [
            "CustomResourceDefinitions",
            "storageclasses.storage.k8s.io",
            "widgets.example.com",
            "deployments",
            "nodes",
        ],
    )
    assert order[:4] == [
        "customresourcedefinitions.apiextensions.k8s.io",
        "storageclasses.storage.k8s.io",
        "deployments.apps",
        "deployments.extensions",
    ]
    assert "nodes" not in order  # a priority cannot bring back a non-restorable resource
    assert order[4:7] == ["configmaps", "limitranges", "namespaces"]


def test_match_priority() -> None:
    assert match_priority("events", AVAILABLE) == ["events"]  # exact wins over events.events.k8s.io
    assert match_priority("Pods", AVAILABLE) == ["pods"]
    assert match_priority("deployments", AVAILABLE) == ["deployments.apps", "deployments.extensions"]
    assert match_priority("deployments.apps", AVAILABLE) == ["deployments.apps"]
    assert match_priority("widgets.example.com", AVAILABLE) == []


def test_resource_filter_limits_the_order() -> None:
    included = IncludesExcludes(["deployments.apps", "pods", "nodes"])
    assert prioritize_resources(AVAILABLE, resource_filter=included) == ["pods", "deployments.apps"]
    excluded = IncludesExcludes([], ["secrets", "configmaps"])
    order = prioritize_resources(AVAILABLE, resource_filter=excluded)
    assert "secrets" not in order and "configmaps" not in order and order[0] == "namespaces"


@pytest.mark.parametrize("typed", ["nodes", "Node", "no", "events", "ev", "backups.ark.heptio.com"])
def test_explicitly_including_a_non_restorable_resource_is_a_validation_error(typed: str) -> None:
    resolver = ResourceResolver(
        [
            Resource("", "v1", "nodes", "Node", namespaced=False, short_names=("no",)),
            Resource("", "v1", "events", "Event", short_names=("ev",)),
            Resource("", "v1", "pods", "Pod", short_names=("po",)),
            Resource("ark.heptio.com", "v1", "backups", "Backup"),
        ]
    )
    included = resolver.includes_excludes([typed, "pods"], []).includes
    errors = non_restorable_errors(included)
    assert len(errors) == 1
    assert errors[0] == f"{resolver.resolve(typed)} are non-restorable resources"


def test_arkd_transient_objects_are_non_restorable_but_repositories_are_not() -> None:
    assert non_restorable_errors(
        [
            "podvolumebackups.ark.heptio.com",
            "podvolumerestores.ark.heptio.com",
            "deletebackuprequests.ark.heptio.com",
        ]
    ) == [
        "podvolumebackups.ark.heptio.com are non-restorable resources",
        "podvolumerestores.ark.heptio.com are non-restorable resources",
        "deletebackuprequests.ark.heptio.com are non-restorable resources",
    ]
    assert non_restorable_errors(["resticrepositories.ark.heptio.com", "pods"]) == []


def test_non_restorables_are_appended_to_the_excludes_once() -> None:
    excluded = with_non_restorable_excluded(["secrets", "nodes"])
    assert excluded[:2] == ["secrets", "nodes"]
    assert sorted(excluded) == sorted({"secrets", *NON_RESTORABLE_RESOURCES})
