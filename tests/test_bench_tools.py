"""The benchmark tools (``bench/``) still work against the product and the floor.

Tiny sizes: these check that each scenario of ``bench/loadgen/`` runs to
the end and checks what it claims (every delivery, the replay sequences,
the loop-lag histogram), not how fast anything is.  The load generator runs
as its own process, as ``bench/run`` runs it, against a server on the
test's loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from typing import Any

import pytest

from bench.loadgen.stats import lag_buckets, lag_window
from bench.soak import _drift
from tests.support.processes import free_port

pytestmark = pytest.mark.timeout(60)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOAK = os.path.join(ROOT, "bench", "soak.py")
FLOOR = os.path.join(ROOT, "bench", "floor.py")
BARE_TORNADO = os.path.join(ROOT, "bench", "bare_tornado.py")


async def run_loadgen(port: int, secret: str, tmp_path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run the load generator to the end; :returns: exit code, its JSON, its output."""
    out = tmp_path / "result.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", *args, "--port", str(port), "--jwt-secret", secret,
        "--json", str(out), "--source-ips", "2", "--settle", "0", "--bcast-pause", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
    )
    output, _ = await proc.communicate()
    result = json.loads(out.read_text()) if out.exists() else {}
    return proc.returncode, result, output.decode("utf-8", "replace")


def test_lag_window_gives_percentiles_of_the_samples_between_two_scrapes():
    before = lag_buckets(b'notify_loop_lag_seconds_bucket{instance="a",le="0.001"} 10.0\n'
                         b'notify_loop_lag_seconds_bucket{instance="a",le="0.01"} 10.0\n'
                         b'notify_loop_lag_seconds_bucket{instance="a",le="+Inf"} 10.0\n')
    after = lag_buckets(b'notify_loop_lag_seconds_bucket{instance="a",le="0.001"} 108.0\n'
                        b'notify_loop_lag_seconds_bucket{instance="a",le="0.01"} 109.0\n'
                        b'notify_loop_lag_seconds_bucket{instance="a",le="+Inf"} 110.0\n')
    window = lag_window(before, after)
    assert window["samples"] == 100
    assert window["p50_le_ms"] == 1.0
    assert window["p99_le_ms"] == 10.0
    assert window["max_le_ms"] is None, "one sample above the last finite bucket"


@pytest.mark.slow
async def test_broadcast_reaches_every_device_through_the_events_api(server, tmp_path):
    code, result, output = await run_loadgen(
        server.port, server.app.config.jwt_secret, tmp_path, "broadcast",
        "--streams", "12", "--bcast-rounds", "2", "--bcast-warmup", "0")
    assert code == 0, output
    broadcast = result["broadcast"]
    assert broadcast["deliveries_received"] == broadcast["deliveries_expected"] == 24
    assert broadcast["latency_ms"]["count"] == 24
    assert broadcast["id_regressions"] == 0


@pytest.mark.slow
async def test_replay_storm_finds_every_client_caught_up_with_no_gap_or_duplicate(server, tmp_path):
    code, result, output = await run_loadgen(
        server.port, server.app.config.jwt_secret, tmp_path, "replay-storm",
        "--streams", "12", "--replay-behind", "4", "--storm-settle", "0.1")
    assert code == 0, output
    storm = result["replay_storm"]
    assert storm["caught_up"] == storm["reconnected"] == 12
    assert storm["within_10s"]
    assert (storm["streams_with_gap"], storm["streams_with_duplicate"], storm["streams_out_of_order"]) == (0, 0, 0)
    assert storm["streams_noncontiguous_cursor"] == 0
    assert storm["resets"] == 0


@pytest.mark.slow
async def test_create_reports_stored_rate_and_the_servers_loop_lag(make_server, tmp_path):
    # As fast as the server stores, with few tokens: a volume test, so no
    # publish budget (the benchmarks themselves run one that never refuses).
    server = await make_server(publish_rate=0)
    code, result, output = await run_loadgen(
        server.port, server.app.config.jwt_secret, tmp_path, "create",
        "--streams", "0", "--create-concurrency", "2", "--duration", "1", "--create-warmup", "0",
        "--create-users", "5")
    assert code == 0, output
    create = result["create"]
    assert create["stored_201"] > 0
    assert create["non_201"] == {} and create["errors"] == {}
    assert create["loop_lag"]["samples"] >= 10, "a second of 50 ms samples"


@pytest.mark.slow
async def test_floor_delivers_events_to_every_device_of_each_listed_user(tmp_path):
    port = free_port()
    floor = await asyncio.create_subprocess_exec(
        sys.executable, FLOOR, "--port", str(port), "--keepalive-interval", "3600",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        banner = await asyncio.wait_for(floor.stdout.readline(), 10)
        assert banner.startswith(b"floor listening"), banner
        code, result, output = await run_loadgen(
            port, "unused-by-the-floor-" + "x" * 16, tmp_path, "broadcast",
            "--streams", "9", "--bcast-rounds", "1", "--bcast-warmup", "0")
        assert code == 0, output
        assert result["broadcast"]["deliveries_received"] == 9
    finally:
        floor.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(floor.wait(), 10) == 0


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["handler", "delegate", "lean", "lean-handler"])
async def test_bare_tornado_answers_the_create_scenario_on_every_layer(tmp_path, layer):
    port = free_port()
    bare = await asyncio.create_subprocess_exec(
        sys.executable, BARE_TORNADO, "--port", str(port), "--layer", layer,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        banner = await asyncio.wait_for(bare.stdout.readline(), 10)
        assert banner.startswith(b"bare tornado (%s)" % layer.encode()), banner
        code, result, output = await run_loadgen(
            port, "unused-by-the-calibration-" + "x" * 16, tmp_path, "create",
            "--streams", "0", "--create-concurrency", "2", "--duration", "0.5", "--create-warmup", "0.1")
        assert code == 0, output
        assert result["create"]["stored_201"] > 0
        assert result["create"]["non_201"] == {}
    finally:
        bare.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(bare.wait(), 10) == 0


def test_soak_drift_compares_the_last_third_with_the_end_of_warm_up():
    samples = [{"t": t, "rss_kb": rss} for t, rss in [(0, 500), (10, 900), (20, 1000), (30, 1010), (40, 1030), (50, 1020), (60, 1040)]]
    drift = _drift(samples, warmup=20, duration=60)
    assert drift["warmup_rss_kb"] == 1000
    assert drift["last_third_max_rss_kb"] == 1040, "the largest sample at t >= 40"
    assert drift["drift_pct"] == pytest.approx(4.0)
    assert drift["slope_kb_per_min"] == pytest.approx(54.0), "least squares over t >= 20"


@pytest.mark.slow
async def test_soak_churns_streams_and_finds_the_stats_back_at_zero(server, tmp_path):
    out = tmp_path / "soak.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, SOAK, "--port", str(server.port), "--jwt-secret", server.app.config.jwt_secret,
        "--streams", "12", "--duration", "3", "--churn", "4", "--rate", "2", "--warmup", "1",
        "--sample-interval", "1", "--source-ips", "2", "--settle", "0", "--server-pid", str(os.getpid()),
        # This process runs the tests too: its RSS says nothing about the server.
        "--max-drift-pct", "1000", "--json", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    assert proc.returncode == 0, output.decode("utf-8", "replace")
    soak = json.loads(out.read_text())["soak"]
    assert soak["passed"] and soak["failures"] == 0
    assert soak["closed_by_churn"] == soak["opened_by_churn"] >= 8
    assert soak["stats_back_to_zero"]
    assert server.manager.get_stats()["totalDevices"] == 0
    assert len(soak["samples"]) >= 4 and all(sample["rss_kb"] for sample in soak["samples"])
    assert soak["drift_pct"] is not None
    assert soak["publishes_201"] >= 4


def test_the_bench_table_shows_the_floors_cpu_per_create_as_the_machines_speed():
    from bench.runner import PLANS, summarise

    def create_run(kind: str, stored: float, cpu_us: float) -> dict[str, Any]:
        return {"label": "create-" + kind, "kind": kind, "exit": 0,
                "result": {"create": {"stored_per_s": stored, "server_cpu_us_per_create": cpu_us}}}

    rows, _ = summarise([create_run("server", 9000.0, 105.0), create_run("floor", 50000.0, 21.0)],
                        dict(PLANS["quick"]), "quick")
    row = next(row for row in rows if row["key"] == "create_cpu")
    assert (row["server"], row["floor"], row["pass"]) == (105.0, 21.0, None)
    assert round(row["ratio"], 2) == 5.0
