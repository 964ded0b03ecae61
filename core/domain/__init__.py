"""Use cases, credentials and validation: what the product does, without HTTP.

:mod:`~core.domain.service` stores a change and then emits it on the event
bus (the only module that reaches ``models``); :mod:`~core.domain.auth`
turns tokens and tickets into a ``Principal``; :mod:`~core.domain.passwords`
hashes on threads of its own; :mod:`~core.domain.validation` checks bodies
and query values; :mod:`~core.domain.errors` are the errors a client may be
told about; :mod:`~core.domain.ratelimit` the per-principal budgets;
:mod:`~core.domain.ids` random ids.  Of the rest of ``core`` it uses only
:mod:`core.fanout` (the bus its changes are emitted on).
"""
