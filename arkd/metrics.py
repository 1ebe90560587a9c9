"""Every arkd metric, defined once on an injected CollectorRegistry, and the HTTP endpoint.

Ark GA's names are kept (`ark_backup_*`, labelled by schedule); arkd adds partial failures,
restores, pod volume operations, bytes, repository maintenance. Controller and queue metrics come
from `arkd.kube.controller.ControllerMetrics` on the same registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("arkd.metrics")

# Ark GA's buckets: one minute to four hours.
DURATION_BUCKETS = (60.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 10800.0, 14400.0)
POD_VOLUME_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0)


@dataclass
class ServerMetrics:
    """Metrics of `ark server`."""

    backup_attempt: Counter
    backup_success: Counter
    backup_partial_failure: Counter
    backup_failure: Counter
    backup_validation_failure: Counter
    backup_duration: Histogram
    backup_tarball_size: Gauge
    backup_items: Gauge
    backup_last_success: Gauge
    backup_deletion_attempt: Counter
    backup_deletion_success: Counter
    backup_deletion_failure: Counter
    restore_attempt: Counter
    restore_success: Counter
    restore_partial_failure: Counter
    restore_failure: Counter
    restore_validation_failure: Counter
    repo_maintenance: Counter
    repo_maintenance_duration: Histogram
    repo_ready: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ServerMetrics:
        def counter(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        sched = ("schedule",)
        return cls(
            backup_attempt=counter("ark_backup_attempt_total", "Total number of attempted backups", sched),
            backup_success=counter("ark_backup_success_total", "Total number of successful backups", sched),
            backup_partial_failure=counter(
                "ark_backup_partial_failure_total", "Total number of partially failed backups", sched
            ),
            backup_failure=counter("ark_backup_failure_total", "Total number of failed backups", sched),
            backup_validation_failure=counter(
                "ark_backup_validation_failure_total", "Total number of backups that failed validation", sched
            ),
            backup_duration=Histogram(
                "ark_backup_duration_seconds",
                "Time taken to complete a backup, in seconds",
                sched,
                buckets=DURATION_BUCKETS,
                registry=registry,
            ),
            backup_tarball_size=Gauge(
                "ark_backup_tarball_size_bytes",
                "Size, in bytes, of a backup tarball",
                sched,
                registry=registry,
            ),
            backup_items=Gauge(
                "ark_backup_items", "Number of items written to the last backup", sched, registry=registry
            ),
            backup_last_success=Gauge(
                "ark_backup_last_successful_timestamp",
                "Unix time of the last successful backup",
                sched,
                registry=registry,
            ),
            backup_deletion_attempt=counter(
                "ark_backup_deletion_attempt_total", "Total number of attempted backup deletions", ()
            ),
            backup_deletion_success=counter(
                "ark_backup_deletion_success_total", "Total number of successful backup deletions", ()
            ),
            backup_deletion_failure=counter(
                "ark_backup_deletion_failure_total", "Total number of failed backup deletions", ()
            ),
            restore_attempt=counter("ark_restore_attempt_total", "Total number of attempted restores", ()),
            restore_success=counter("ark_restore_success_total", "Total number of successful restores", ()),
            restore_partial_failure=counter(
                "ark_restore_partial_failure_total", "Total number of partially failed restores", ()
            ),
            restore_failure=counter("ark_restore_failure_total", "Total number of failed restores", ()),
            restore_validation_failure=counter(
                "ark_restore_validation_failure_total", "Total number of restores that failed validation", ()
            ),
            repo_maintenance=counter(
                "ark_restic_repository_maintenance_total",
                "Restic repository maintenance runs by result",
                ("repository", "result"),
            ),
            repo_maintenance_duration=Histogram(
                "ark_restic_repository_maintenance_duration_seconds",
                "Duration of restic repository maintenance (unlock, prune, check)",
                buckets=POD_VOLUME_BUCKETS,
                registry=registry,
            ),
            repo_ready=Gauge(
                "ark_restic_repository_ready",
                "1 when the restic repository is Ready, else 0",
                ("repository",),
                registry=registry,
            ),
        )

    def init_schedule(self, schedule: str) -> None:
        """Counters exist at 0 for every schedule, so `rate()` and absence alerts work from the start."""
        for m in (
            self.backup_attempt,
            self.backup_success,
            self.backup_partial_failure,
            self.backup_failure,
            self.backup_validation_failure,
        ):
            m.labels(schedule=schedule)


@dataclass
class PodVolumeMetrics:
    """Metrics of `ark restic server` (the node agent)."""

    operations: Counter
    bytes_processed: Counter
    duration: Histogram
    in_flight: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> PodVolumeMetrics:
        return cls(
            operations=Counter(
                "ark_pod_volume_operations_total",
                "Pod volume backups and restores by node, operation and result",
                ("node", "operation", "result"),
                registry=registry,
            ),
            bytes_processed=Counter(
                "ark_pod_volume_bytes_total",
                "Bytes read (backup) or written (restore) by restic",
                ("node", "operation"),
                registry=registry,
            ),
            duration=Histogram(
                "ark_pod_volume_operation_duration_seconds",
                "Duration of pod volume backups and restores",
                ("node", "operation"),
                buckets=POD_VOLUME_BUCKETS,
                registry=registry,
            ),
            in_flight=Gauge(
                "ark_pod_volume_operations_in_flight",
                "Pod volume backups and restores running now",
                ("node", "operation"),
                registry=registry,
            ),
        )


class HttpEndpoint:
    """Serves /metrics, /healthz (process alive) and /readyz (caller-defined readiness)."""

    def __init__(self, registry: CollectorRegistry, address: str, ready: Callable[[], bool]) -> None:
        self.registry = registry
        host, _, port = address.rpartition(":")
        self.host = host or "0.0.0.0"
        self.port = int(port)
        self.ready = ready
        self._runner: web.AppRunner | None = None

    async def _metrics(self, _: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _readyz(self, _: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ok")
        return web.Response(status=503, text="not ready")

    async def start(self) -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/metrics", self._metrics),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
            ]
        )
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        log.info("serving metrics", extra={"address": f"{self.host}:{self.port}"})

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
