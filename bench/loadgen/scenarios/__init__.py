"""The scenarios, one module each, and the names the command line knows them by.

Each is a coroutine function taking the :class:`~bench.loadgen.session.LoadGen`
of the run; it stores its figures under its own key of the result document
and returns them.
"""

from . import broadcast, conns, create, peruser, replay_storm

#: Command-line name -> the scenario's coroutine function.  Scenarios given
#: together run in the order given, on the same streams.
RUNNERS = {
    "conns": conns.hold,
    "peruser": peruser.run,
    "broadcast": broadcast.run,
    "create": create.run,
    "replay-storm": replay_storm.run,
}
SCENARIOS = tuple(RUNNERS)
#: The scenarios that need streams open first (:func:`conns.open_streams`).
STREAM_SCENARIOS = ("conns", "peruser", "broadcast", "replay-storm")
