"""How a stored change reaches every process: the event bus and the brokers.

:mod:`~core.fanout.event_bus` carries domain events inside a process;
:mod:`~core.fanout.broker` defines the one small interface between
processes and its in-process implementation; :mod:`~core.fanout.redis_broker`
is the same interface over Redis pub/sub.  Only ``core.domain`` (the
message type) is imported from here.
"""
