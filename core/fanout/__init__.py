"""How a stored change reaches every process: the message, the event bus, the brokers.

:mod:`~core.fanout.messages` is the message a stored change becomes;
:mod:`~core.fanout.event_bus` carries domain events inside a process;
:mod:`~core.fanout.broker` defines the one small interface between
processes and its in-process implementation; :mod:`~core.fanout.redis_broker`
is the same interface over Redis pub/sub.  It imports nothing else of the
product.
"""
