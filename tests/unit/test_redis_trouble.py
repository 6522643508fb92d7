"""`redis_clients.classify` and `Outage`: which Redis errors a loop waits out, and how it logs them.

The errors are built by redis-py's own reply parser from the exact text Redis sends, so each
case is the exception a command really raises.
"""

from __future__ import annotations

import pytest
import redis
import structlog
from redis._parsers.base import BaseParser
from structlog.testing import capture_logs

from orchestrator.redis_clients import Outage, Trouble, classify


def reply_error(text: str) -> redis.RedisError:
    """The exception redis-py raises for the error reply `-<text>`."""
    error = BaseParser.parse_error(text)
    assert isinstance(error, redis.RedisError)
    return error


@pytest.mark.parametrize(
    "reply",
    [
        "UNBLOCKED the stream key no longer exists",  # Redis 7: FLUSHALL/DEL under a blocked XREADGROUP
        "NOGROUP No such key 'steppe:q:default' or consumer group 'workers' in XREADGROUP with GROUP option",
        "NOGROUP No such key or consumer group",  # XCLAIM / XPENDING / XAUTOCLAIM
        "ERR no such key",  # XINFO GROUPS on a vanished stream
    ],
)
def test_vanished_streams_and_groups_are_data_loss(reply: str) -> None:
    assert classify(reply_error(reply)) is Trouble.DATA_LOST


@pytest.mark.parametrize(
    "reply",
    [
        "LOADING Redis is loading the dataset in memory",
        "READONLY You can't write against a read only replica.",
        "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
        "CLUSTERDOWN The cluster is down",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.",
        "OOM command not allowed when used memory > 'maxmemory'.",
        # Nothing vanished: the server turned replica, or an operator ran CLIENT UNBLOCK … ERROR.
        "UNBLOCKED force unblock from blocking operation, instance state changed (master -> replica?)",
        "UNBLOCKED client unblocked via CLIENT UNBLOCK",
    ],
)
def test_a_server_that_cannot_serve_now_is_waited_out(reply: str) -> None:
    assert classify(reply_error(reply)) is Trouble.UNAVAILABLE


@pytest.mark.parametrize(
    "error",
    [
        redis.ConnectionError("Connection reset by peer"),
        redis.TimeoutError("Timeout reading from socket"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),  # asyncio.timeout
    ],
)
def test_connection_resets_and_timeouts_are_waited_out(error: BaseException) -> None:
    assert classify(error) is Trouble.UNAVAILABLE


@pytest.mark.parametrize(
    "error",
    [
        reply_error("WRONGTYPE Operation against a key holding the wrong kind of value"),
        reply_error("ERR syntax error"),
        reply_error("NOPERM this user has no permissions to run the 'xreadgroup' command"),
        redis.DataError("Invalid input of type: 'dict'"),
        ValueError("a bug"),
    ],
)
def test_bugs_and_misconfiguration_are_not_waited_out(error: BaseException) -> None:
    assert classify(error) is None


def test_errors_inside_a_pipeline_keep_their_class() -> None:
    error = reply_error("NOGROUP No such key 'q' or consumer group 'workers'")
    # What redis-py's pipeline does to an error of one of its commands.
    redis.client.Pipeline.annotate_exception(None, error, 2, ("XCLAIM", "q", "workers"))
    assert str(error).startswith("Command # 2 (XCLAIM q workers) of pipeline caused error: NOGROUP")
    assert classify(error) is Trouble.DATA_LOST
    error.status_code = None  # redis-py < 6 keeps no code apart from the text
    assert classify(error) is Trouble.DATA_LOST
    assert classify(redis.ResponseError("UNBLOCKED the stream key no longer exists")) is Trouble.DATA_LOST


def test_outage_logs_once_backs_off_and_reports_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.redis_clients.random.uniform", lambda a, b: 1.0)
    outage = Outage("loop_redis_error", structlog.get_logger(), first=0.1, cap=0.5, fields={"worker": "w1"})
    lost = reply_error("UNBLOCKED the stream key no longer exists")
    down = redis.ConnectionError("Connection refused")
    with capture_logs() as logs:
        delays = [outage.failed(down, Trouble.UNAVAILABLE) for _ in range(5)]
        outage.failed(lost, Trouble.DATA_LOST)  # another kind of trouble: said once more
        outage.failed(lost, Trouble.DATA_LOST)
        outage.succeeded()
        outage.succeeded()  # nothing to report twice
        again = outage.failed(down, Trouble.UNAVAILABLE)  # a new outage starts from `first`
    assert delays == [0.1, 0.2, 0.4, 0.5, 0.5]
    assert again == 0.1
    events = [(e["event"], e.get("trouble"), e.get("error"), e.get("failures")) for e in logs]
    assert events == [
        ("loop_redis_error", "unavailable", "Connection refused", None),
        ("loop_redis_error", "data_lost", "UNBLOCKED the stream key no longer exists", None),
        ("loop_redis_error_recovered", None, None, 7),
        ("loop_redis_error", "unavailable", "Connection refused", None),
    ]
    assert {e["worker"] for e in logs} == {"w1"}
    assert [e["log_level"] for e in logs] == ["warning", "warning", "info", "warning"]
