"""The OpenAPI description against a real server, with schemathesis.

``docs/openapi.yaml`` drives the requests: for every operation schemathesis
sends the examples of the document, boundary and just-out-of-bounds values
of each field (its coverage phase), and a few random valid and invalid
requests (fuzzing).  Each request goes to a real ``server.py`` in a
subprocess (over this run's database: a SQLite file, or a fresh PostgreSQL
schema), once as an admin, once as an ordinary user who owns nothing in the
request, and once without a credential, so that 2xx, 401 and 403 answers
are all exercised.

Every answer must be one the document describes: no 5xx, a documented
status, the documented content type, the required response headers, and a
body that matches the documented schema (JSON; for the stream, its first
event).  The server must log no error or traceback meanwhile.

Generation is seeded, so a run is repeatable; few random examples per
operation keep the module to seconds.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import hypothesis
import psycopg2
import pytest
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.feedback import FeedbackSources

# schemathesis's own pytest integration gives every operation's test the
# same node id under pytest 9.2 (and its lazy-schema variant fails there),
# so this module parametrizes by operation itself and asks schemathesis
# only for the Hypothesis test of one operation, which is what its
# integration does underneath.
from schemathesis.pytest._test_builder import build_operation_test
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import TEST_DB, _pg_schemas
from tests.support.processes import ROOT, SECRET, ServerProcess, serving, token_for

pytestmark = [pytest.mark.timeout(60), pytest.mark.slow]

OPENAPI = Path(ROOT) / "docs" / "openapi.yaml"

#: What every response is checked for: no server error, and conformance of
#: status, content type, headers and body to the document.  Checks of what
#: the server *should* accept are left out: a valid-looking request for a
#: random user's unknown notification is rightly a 404.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

CONFIG = {
    # Repeatable runs, and no example database in the working tree.
    "seed": 20260601,
    "generation": {"max-examples": 6, "database": "none"},
    "phases": {
        # Methods a path does not list: a JSON 405, which
        # tests/test_errors.py covers; here they would only add time.
        "coverage": {"unexpected-methods": []},
    },
    # The stream never ends by itself: read it up to the `ready` event.
    "max-stream-events": 1,
    "request-timeout": 5,
    "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
}


def load_schema(base_url: str | None = None) -> schemathesis.schemas.BaseSchema:
    """The document as schemathesis sees it, aimed at ``base_url``."""
    config = dict(CONFIG, **({"base-url": base_url} if base_url else {}))
    return schemathesis.openapi.from_path(OPENAPI, config=SchemathesisConfig.from_dict(config))


def operation_labels() -> list[str]:
    """``"METHOD /path"`` of every operation the document describes."""
    return [result.ok().label for result in load_schema().get_all_operations()]


class API:
    """The server under test, its document, and the credentials to send."""

    def __init__(self, process: ServerProcess, db_url: str) -> None:
        self.process = process
        self.db_url = db_url
        self.schema = load_schema(f"http://{process.host}:{process.port}")
        self.operations = {result.ok().label: result.ok() for result in self.schema.get_all_operations()}
        admin = token_for("fuzz_admin", "admin")
        user = token_for("fuzz_user", "user")
        #: An admin (may do anything), a user acting on someone else's
        #: resources (403), nobody (401).
        self.credentials = [
            {"Authorization": f"Bearer {admin}"},
            {"Authorization": f"Bearer {user}"},
            {},
        ]

    def forget_notifications(self) -> None:
        """Empty the notification store (users stay), straight in the server's database.

        The server keeps nothing of it in memory while no stream is open,
        so its next answers are those of an empty store.
        """
        tables = ("notifications", "stream_events", "user_cursors")
        if self.db_url.startswith("sqlite:///"):
            connection = sqlite3.connect(self.db_url[len("sqlite:///"):], timeout=10)
            try:
                with connection:
                    for table in tables:
                        connection.execute(f'DELETE FROM "{table}"')
            finally:
                connection.close()
            return
        connection = psycopg2.connect(self.db_url)
        try:
            with connection, connection.cursor() as cursor:
                for table in tables:
                    cursor.execute(f'DELETE FROM "{table}"')
        finally:
            connection.close()

    def errors_logged(self) -> list[str]:
        """Lines of the server's log that report an error or a traceback."""
        return [line for line in self.process.log().splitlines() if " ERROR " in line or "Traceback" in line]


@contextlib.contextmanager
def _database_url(directory: Path) -> Iterator[str]:
    """This run's kind of database: a SQLite file, or a fresh PostgreSQL schema."""
    if TEST_DB == "sqlite":
        yield f"sqlite:///{directory / 'fuzz.db'}"
        return
    with _pg_schemas() as new_schema:
        yield new_schema()


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[API]:
    """One ``server.py --demo`` for the module (the login example is a demo user)."""
    directory = tmp_path_factory.mktemp("fuzz")
    with _database_url(directory) as db_url:
        args = ["--demo", "--jwt-secret", SECRET, "--db-url", db_url, "--log-level", "info"]
        with serving(directory, args) as process:
            yield API(process, db_url)


@pytest.mark.parametrize("label", operation_labels())
def test_every_answer_is_one_the_document_describes(label, api):
    operation = api.operations[label]

    # An operation open to anyone answers the same whoever asks: once is enough.
    credentials = api.credentials if operation.definition.raw.get("security") != [] else [{}]

    def send_and_validate(case) -> None:
        for headers in credentials:
            case.call_and_validate(headers=headers, checks=CHECKS)

    run = build_operation_test(
        config=api.schema.config,
        operation=operation,
        test_func=send_and_validate,
        given_kwargs={},
        feedback=FeedbackSources(),
    )
    run()
    assert api.errors_logged() == []


def test_linked_calls_on_a_created_notification_answer_as_described(api):
    """Create, then read, mark and delete that very notification.

    The document's links say where a new notification's id goes, so these
    chains reach the 200 and 204 answers that random ids (404) never do.
    """
    admin = api.credentials[0]

    class Workflow(api.schema.as_state_machine()):
        """Chains of linked calls, as an admin, checked like every other call."""

        def setup(self):
            """Every scenario starts from an empty store.

            The links draw their next step from the answers, so two
            scenarios with the same choices must see the same answers:
            otherwise Hypothesis finds its data generation "flaky" (a
            bundle filled in one run and empty in the next, because an
            earlier scenario left notifications behind).
            """
            api.forget_notifications()

        def get_call_kwargs(self, case):
            """Send the admin's credential."""
            return {"headers": admin}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            """The same checks as the single calls."""
            case.validate_response(response, checks=CHECKS)

    # Derandomized as under CI everywhere, so a local run repeats CI's.
    Workflow.run(settings=hypothesis.settings(max_examples=25, stateful_step_count=6, deadline=None,
                                              derandomize=True, database=None))
    assert api.errors_logged() == []
