"""The HTTP side of the product: routes, the doors requests come through, errors.

Thin: parse, authorize, call a use case, write JSON or hand a stream over.
Nothing here reaches the database except through ``core.domain.service``.
"""
