"""Use cases, credentials and validation: what the product does, without HTTP.

:mod:`~core.domain.service` stores a change and then emits it on the event
bus (the only module that reaches ``models``); :mod:`~core.domain.auth`
turns tokens and tickets into a ``Principal``; :mod:`~core.domain.passwords`
hashes on threads of its own; :mod:`~core.domain.validation` checks bodies
and query values; :mod:`~core.domain.errors` are the errors a client may be
told about; :mod:`~core.domain.messages` is the event a change becomes;
:mod:`~core.domain.ratelimit` the per-principal budgets.  Nothing here
imports another ``core`` package.
"""
