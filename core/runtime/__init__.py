"""Running the process: configuration, the supervisor, metrics, loop lag.

:mod:`~core.runtime.config` is the one home of every setting (flags and
``NOTIFY_*``); :mod:`~core.runtime.supervisor` forks and watches
``--processes N``; :mod:`~core.runtime.metrics` exposes the live counters
to Prometheus; :mod:`~core.runtime.looplag` samples how late the IOLoop runs.
"""
