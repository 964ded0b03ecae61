"""Storage: peewee models, their queries, and the threads that run them.

Reached only through :mod:`core.domain.service`.
"""
