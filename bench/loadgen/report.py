"""Output: the result document as the human-readable table printed on stdout,
and the verdict of whether its figures are whole (the exit status).
"""

import json

# Above this the single loadgen thread, not the server, may be what limits
# the figures.
_CLIENT_BOUND_PCT = 80.0


def fmt(value, spec=".1f"):
    """:returns: ``value`` formatted with ``spec``, or ``n/a`` for ``None``."""
    if value is None:
        return "n/a"
    return format(value, spec)


def _fmt_pcts(p, unit):
    return "p50 %s  p90 %s  p99 %s  max %s %s  (n=%d)" % (
        fmt(p["p50"], ".2f"), fmt(p["p90"], ".2f"), fmt(p["p99"], ".2f"),
        fmt(p["max"], ".2f"), unit, p["count"])


def _counts(counter):
    return json.dumps(counter) if counter else "0"


def render(result):
    """Format a result document as a human-readable table.

    :param dict result: what :meth:`~bench.loadgen.session.LoadGen.run` returned.
    :rtype: str
    """
    cfg = result["config"]
    rows = []
    c = result.get("conns")
    if c:
        rows.append(("conns", "%d streams (%d users x %d devices) -> %s:%d"
                     % (c["streams_requested"], c["users"], cfg["devices_per_user"],
                        cfg["host"], cfg["port"])))
        rows.append(("  streams ready", "%d / %d" % (c["streams_ready"], c["streams_requested"])))
        rows.append(("  failures", _counts(c["failures"])))
        rows.append(("  open wall time", "%s s (%s streams/s)"
                     % (fmt(c["open_wall_s"], ".2f"), fmt(c["streams_per_s"], ".0f"))))
        rows.append(("  connect->ready", _fmt_pcts(c["connect_ready_ms"], "ms")))
        rows.append(("  server RSS", "%s -> %s MB, %s KB/stream"
                     % (fmt(c["server_rss_before_kb"] and c["server_rss_before_kb"] / 1024),
                        fmt(c["server_rss_after_kb"] and c["server_rss_after_kb"] / 1024),
                        fmt(c["server_rss_per_stream_kb"], ".2f"))))
        rows.append(("  server CPU", "%s s, %s us/stream opened"
                     % (fmt(c["server_cpu_s"], ".2f"), fmt(c["server_cpu_us_per_stream"], ".0f"))))
        rows.append(("  loadgen CPU", _client_cpu(c["loadgen_cpu_pct"])))
        if "pings_during_hold" in c:
            rows.append(("  pings in hold", "%d in %s s" % (c["pings_during_hold"], c["hold_s"])))
    p = result.get("peruser")
    if p:
        rows.append(("peruser", "%s/s for %s s, %d publisher connections"
                     % (fmt(p["rate"], "g"), fmt(p["duration_s"], "g"), cfg["publishers"])))
        rows.append(("  publishes", "%d sent, %d x 201, achieved %s/s"
                     % (p["publishes_sent"], p["publishes_201"], fmt(p["achieved_rate"], ".1f"))))
        rows.append(("  non-201 / errors", "%s / %s" % (_counts(p["non_201"]), _counts(p["publish_errors"]))))
        rows.append(("  late sends", "%d (max lag %s ms)" % (p["late_sends"], fmt(p["max_send_lag_ms"], ".2f"))))
        rows.append(("  deliveries", "%d received / %d expected%s"
                     % (p["deliveries_received"], p["deliveries_expected"],
                        "" if p["deliveries_received"] == p["deliveries_expected"] else "  MISMATCH")))
        rows.append(("  id regressions", str(p["id_regressions"])))
        rows.append(("  latency", _fmt_pcts(p["latency_ms"], "ms")))
        rows.append(("  server CPU", "%s s, %s us/publish, %s us/delivery"
                     % (fmt(p["server_cpu_s"], ".2f"), fmt(p["server_cpu_us_per_publish"], ".0f"),
                        fmt(p["server_cpu_us_per_delivery"], ".0f"))))
        rows.append(("  loadgen CPU", _client_cpu(p["loadgen_cpu_pct"])))
    b = result.get("broadcast")
    if b:
        rows.append(("broadcast", "%d users, %d streams, %d request(s) per round, %d rounds (+%d warm-up)"
                     % (b["users"], b["streams"], b["requests_per_round"], b["rounds_measured"],
                        b["warmup_rounds"])))
        for r in b["rounds"]:
            rows.append(("  round %d%s" % (r["round"], " (warm-up)" if r["warmup"] else ""),
                         "%d/%d in %s ms, %s/s, %s us/delivery, p50 %s p99 %s max %s ms%s"
                         % (r["deliveries_received"], r["deliveries_expected"], fmt(r["wall_ms"], ".0f"),
                            fmt(r["deliveries_per_s"], ".0f"), fmt(r["server_cpu_us_per_delivery"], ".1f"),
                            fmt(r["latency_ms"]["p50"], ".1f"), fmt(r["latency_ms"]["p99"], ".1f"),
                            fmt(r["latency_ms"]["max"], ".1f"),
                            "" if set(r["requests"]) == {"202"} else "  requests " + _counts(r["requests"]))))
        rows.append(("  deliveries", "%d received / %d expected%s, id regressions %d"
                     % (b["deliveries_received"], b["deliveries_expected"],
                        "" if b["all_delivered"] else "  MISMATCH", b["id_regressions"])))
        rows.append(("  rate", "%s deliveries/s (median round)" % fmt(b["deliveries_per_s_median"], ".0f")))
        rows.append(("  server CPU", "%s us/delivery (best round %s)"
                     % (fmt(b["server_cpu_us_per_delivery"], ".1f"),
                        fmt(b["server_cpu_us_per_delivery_best_round"], ".1f"))))
        rows.append(("  latency", _fmt_pcts(b["latency_ms"], "ms")))
        rows.append(("  loadgen CPU", _client_cpu(b["loadgen_cpu_pct"])))
    cr = result.get("create")
    if cr:
        for s in cr["steps"]:
            lag = s["loop_lag"]
            rows.append(("create x%d" % s["concurrency"],
                         "%s stored/s over %s s (seconds %s..%s), request p50 %s p99 %s ms, %s us/create, "
                         "server %s%% CPU%s"
                         % (fmt(s["stored_per_s"], ".0f"), fmt(s["window_s"], "g"),
                            fmt(s["per_second_min"], "d"), fmt(s["per_second_max"], "d"),
                            fmt(s["request_ms"]["p50"], ".1f"), fmt(s["request_ms"]["p99"], ".1f"),
                            fmt(s["server_cpu_us_per_create"], ".0f"), fmt(s["server_cpu_pct"], ".0f"),
                            "" if not (s["non_201"] or s["errors"]) else
                            "  non-201 %s errors %s" % (_counts(s["non_201"]), _counts(s["errors"])))))
            rows.append(("  loop lag", "n/a (no notify_loop_lag_seconds in /metrics)" if lag is None else
                         "p50 %s ms, p99 %s ms (bucket <= %s), max <= %s ms (stats' 10 s max %s), %d samples"
                         % (fmt(lag["p50_ms"], ".2f"), fmt(lag["p99_ms"], ".2f"), fmt(lag["p99_le_ms"], "g"),
                            fmt(lag["max_le_ms"], "g"), fmt(lag["max_ms_recent"], ".1f"), lag["samples"])))
            rows.append(("  loadgen CPU", _client_cpu(s["loadgen_cpu_pct"])))
        rows.append(("create best", "%s stored/s at concurrency %d"
                     % (fmt(cr["stored_per_s"], ".0f"), cr["concurrency"])))
    rs = result.get("replay_storm")
    if rs:
        rows.append(("replay-storm", "%d clients (%d users), each %d events behind"
                     % (rs["clients"], rs["users"], rs["behind"])))
        if "error" in rs:
            rows.append(("  ERROR", rs["error"]))
        else:
            rows.append(("  publishes", "mark %s, behind %s" % (_counts(rs["mark_requests"]),
                                                                  _counts(rs["publish_requests"]))))
            rows.append(("  reconnected", "%d / %d (at once: %d), failures %s, connect wall %s s"
                         % (rs["reconnected"], rs["clients"], rs["storm_concurrency"],
                            _counts(rs["connect_failures"]), fmt(rs["connect_wall_s"], ".2f"))))
            rows.append(("  caught up", "%d / %d, all in %s s, within 10 s: %s"
                         % (rs["caught_up"], rs["clients"], fmt(rs["all_caught_up_s"], ".2f"),
                            "yes" if rs["within_10s"] else "NO")))
            rows.append(("  catch-up time", _fmt_pcts(rs["catch_up_s"], "s")))
            rows.append(("  sequence check", "gap %d, duplicate %d, out of order %d, reset %d "
                         "(non-contiguous cursors %d)"
                         % (rs["streams_with_gap"], rs["streams_with_duplicate"], rs["streams_out_of_order"],
                            rs["resets"], rs["streams_noncontiguous_cursor"])))
            rows.append(("  server CPU", "%s s, %s us/client"
                         % (fmt(rs["server_cpu_s"], ".2f"), fmt(rs["server_cpu_us_per_client"], ".0f"))))
            rows.append(("  loadgen CPU", _client_cpu(rs["loadgen_cpu_pct"])))
    e = result.get("end")
    if e:
        rows.append(("end", "closed early %d, pings %d, other events %s, bad payloads %d"
                     % (e["streams_closed_early"], e["pings_received"], _counts(e["other_events"]),
                        e["bad_payloads"])))
    if not rows:
        return "(nothing measured)"
    width = max(len(k) for k, _ in rows)
    return "\n".join("%-*s  %s" % (width, k, v) for k, v in rows)


def _client_cpu(pct):
    if pct is None:
        return "n/a"
    flag = "  CLIENT-BOUND: figures may reflect the load generator" if pct > _CLIENT_BOUND_PCT else ""
    return "%.0f%% of one core%s" % (pct, flag)


def passed(result):
    """Whether every measured scenario completed without a loss or a failure.

    Not the performance targets (``bench/run`` judges those), only that the
    figures are whole: every stream ready, every request accepted, every
    delivery arrived, the replay sequences exact.

    :param dict result: what :meth:`~bench.loadgen.session.LoadGen.run` returned.
    :rtype: bool
    """
    ok = True
    c = result.get("conns")
    if c:
        ok = ok and c["streams_ready"] == c["streams_requested"]
    p = result.get("peruser")
    if p:
        ok = ok and p["publishes_201"] == p["publishes_sent"] and \
            p["deliveries_received"] == p["deliveries_expected"]
    b = result.get("broadcast")
    if b:
        ok = ok and b["all_delivered"] and b["all_accepted"]
    cr = result.get("create")
    if cr:
        ok = ok and all(not s["non_201"] and not s["errors"] for s in cr["steps"])
    rs = result.get("replay_storm")
    if rs:
        ok = ok and "error" not in rs and rs["caught_up"] == rs["clients"] and not (
            rs["streams_with_gap"] or rs["streams_with_duplicate"] or rs["streams_out_of_order"]
            or rs["resets"])
    return ok
