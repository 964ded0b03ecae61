"""The command line: argument parsing, the event loop, printing and writing the result."""

import argparse
import asyncio
import json
import resource
import sys

from . import __doc__ as _PACKAGE_DOC
from .report import passed, render
from .scenarios import SCENARIOS, STREAM_SCENARIOS
from .session import LoadGen


def raise_fd_limit(needed):
    """Raise this process's descriptor limit to the hard limit; exit if ``needed`` is above it.

    :param int needed: descriptors the run will hold at once.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if needed > soft:
        sys.exit("need about %d file descriptors, the limit is %d" % (needed, soft))


def event_loop_runner(args):
    """Choose how the run's coroutine is run, and record the choice as ``args.loop``.

    :param argparse.Namespace args: with ``no_uvloop``.
    :returns: ``uvloop.run``, unless ``--no-uvloop`` is given or uvloop is
        not installed; ``asyncio.run`` then.
    """
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            pass
    args.loop = "uvloop" if runner is not asyncio.run else "asyncio"
    return runner


def _int_list(text):
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated integers, got %r" % text) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, got %r" % text)
    return values


def parse_args(argv=None):
    """Parse the command line.

    :param list argv: arguments, default ``sys.argv[1:]``.
    :rtype: argparse.Namespace
    """
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen",
                                 description=_PACKAGE_DOC.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("scenario", nargs="+", choices=SCENARIOS,
                    help="one or more, run in this order on the same streams")
    ap.add_argument("--host", default="127.0.0.1", help="server address (loopback only)")
    ap.add_argument("--port", type=int, default=8888)
    ap.add_argument("--publish-port", type=int, default=None,
                    help="peruser: POST to this port (another process of the same service) "
                         "instead of --port, to measure cross-process delivery")
    ap.add_argument("--jwt-secret", required=True, help="the server's HS256 secret")
    ap.add_argument("--jwt-ttl", type=int, default=3600, help="token lifetime, seconds")
    ap.add_argument("--streams", "-n", type=int, default=3000, help="SSE streams to open")
    ap.add_argument("--devices-per-user", type=int, default=3)
    ap.add_argument("--connect-concurrency", type=int, default=200)
    ap.add_argument("--connect-timeout", type=float, default=30.0,
                    help="seconds for one stream to reach ready")
    ap.add_argument("--connect-phase-timeout", type=float, default=300.0,
                    help="no new stream is started after this many seconds")
    ap.add_argument("--source-ips", type=int, default=8,
                    help="spread streams over 127.0.0.2 .. 127.0.0.(1+K)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds between the last ready and the RSS reading")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="conns: seconds to keep the streams open before closing")
    ap.add_argument("--rate", type=float, default=200.0, help="peruser: publishes per second")
    ap.add_argument("--duration", type=float, default=20.0,
                    help="peruser: seconds of publishing; create: seconds of each measured window")
    ap.add_argument("--publishers", type=int, default=16, help="peruser: keep-alive connections")
    ap.add_argument("--request-timeout", type=float, default=10.0, help="per API request")
    ap.add_argument("--drain", type=float, default=5.0,
                    help="peruser: max seconds to wait for deliveries after the last answer")
    ap.add_argument("--seed", type=int, default=1, help="user choice seed")
    ap.add_argument("--event-batch", type=int, default=1000,
                    help="userIds per POST /api/v1/events (the contract allows 1..1000)")
    ap.add_argument("--bcast-rounds", type=int, default=5, help="broadcast: measured rounds")
    ap.add_argument("--bcast-warmup", type=int, default=1, help="broadcast: unmeasured rounds first")
    ap.add_argument("--bcast-pause", type=float, default=1.0,
                    help="broadcast/create: seconds of quiet before each round or step")
    ap.add_argument("--bcast-timeout", type=float, default=30.0,
                    help="broadcast: max seconds for one round's deliveries")
    ap.add_argument("--create-concurrency", type=_int_list, default=[16, 64, 256],
                    help="create: keep-alive connections posting back to back, one step per value")
    ap.add_argument("--create-warmup", type=float, default=2.0,
                    help="create: seconds before each step's window")
    ap.add_argument("--create-users", type=int, default=1000, help="create: random recipients")
    ap.add_argument("--replay-behind", type=int, default=10,
                    help="replay-storm: events each user misses while away")
    ap.add_argument("--storm-concurrency", type=int, default=0,
                    help="replay-storm: reconnects in flight at once (0: all)")
    ap.add_argument("--storm-timeout", type=float, default=30.0,
                    help="replay-storm: max seconds from the storm's start to everyone caught up")
    ap.add_argument("--storm-settle", type=float, default=0.5,
                    help="replay-storm: seconds to wait for duplicates after the last catch-up")
    ap.add_argument("--server-pid", type=int, help="read RSS and CPU of this process")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    ap.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    args = ap.parse_args(argv)
    if not args.host.startswith("127."):
        ap.error("--host must be a loopback address (127.0.0.0/8)")
    if min(args.devices_per_user, args.connect_concurrency, args.source_ips, args.publishers,
           args.bcast_rounds, args.create_users, args.replay_behind) < 1 \
            or args.rate <= 0 or args.duration <= 0 or args.streams < 0:
        ap.error("counts, --rate and --duration must be positive")
    if not 1 <= args.event_batch <= 1000:
        ap.error("--event-batch must be 1..1000 (the contract's limit)")
    if args.streams == 0 and set(args.scenario) & set(STREAM_SCENARIOS):
        ap.error("%s need --streams above 0" % ", ".join(sorted(set(args.scenario) & set(STREAM_SCENARIOS))))
    return args


def main(argv=None):
    """Entry point.

    :returns: 0 when :func:`~bench.loadgen.report.passed`, 1 otherwise.
    :rtype: int
    """
    args = parse_args(argv)
    concurrency = max(args.create_concurrency) if "create" in args.scenario else 0
    # replay-storm closes every stream (and waits for it) before reconnecting
    # them, so it never holds more than --streams at once either.
    raise_fd_limit(args.streams + args.publishers + concurrency + 64)
    runner = event_loop_runner(args)
    result = runner(LoadGen(args).run())
    print(render(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if passed(result) else 1
