"""The log of one backup or restore run: what its uploaded log holds and what reaches the server log."""

from __future__ import annotations

import datetime
import logging

import pytest

from arkd.controllers.runlog import RunLog

WHEN = datetime.datetime(2026, 11, 24, 12, 0, 0, 123456, tzinfo=datetime.UTC)


def run_log(logger: logging.Logger) -> RunLog:
    return RunLog("restore", "heptio-ark/r1", "uid-1", lambda: WHEN, logger)


def test_per_item_lines_go_to_the_run_log_and_only_to_a_debug_server_log(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("arkd.test.runlog")
    log = run_log(logger)
    with caplog.at_level(logging.INFO, logger=logger.name):
        log.detail("restored", item="configmaps app/settings")
        log.info("restore finished", items=1)
    assert [r.getMessage() for r in caplog.records] == ["restore finished"]
    assert log.text().splitlines() == [
        'time="2026-11-24T12:00:00Z" level=info msg=restored restore=heptio-ark/r1 item="configmaps app/settings"',
        'time="2026-11-24T12:00:00Z" level=info msg="restore finished" restore=heptio-ark/r1 items=1',
    ]
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        log.detail("restored", item="secrets app/db")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.DEBUG, "restored")]


def test_warnings_are_counted_and_lines_past_the_cap_are_summarised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("arkd.controllers.runlog.MAX_LOG_LINES", 2)
    log = run_log(logging.getLogger("arkd.test.runlog"))
    log.warn("namespace app2 exists")
    for i in range(3):
        log.detail("restored", item=f"configmaps app/c{i}")
    assert log.warnings == ["namespace app2 exists"]
    lines = log.text().splitlines()
    assert len(lines) == 3
    assert lines[-1] == 'level=warning msg="2 more log lines were dropped" restore=heptio-ark/r1'
