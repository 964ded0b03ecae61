"""Storage behaviour that must be the same over SQLite and PostgreSQL.

``make test`` runs every test twice, once per database; these are the
cases where the two differed before (PostgreSQL's ``text`` cannot hold NUL;
PostgreSQL fails one of two processes creating the same tables at once).
"""

from __future__ import annotations

import subprocess
import sys
import urllib.parse

import pytest

from models.tables import database
from tests.support.checks import assert_error
from tests.support.processes import ROOT

pytestmark = pytest.mark.usefixtures("no_error_logged")


async def test_a_message_with_nul_is_read_back_as_sent(server):
    # U+FFFF too: PostgreSQL stores NUL escaped with it, so it must survive as well.
    message = "a\x00b \uffff0 \uffff\uffff c\x00"
    created = await server.notify("alice", message)
    status, _, page, raw = await server.request("GET", "/api/v1/users/alice/notifications", as_user="alice")
    assert status == 200, raw
    assert [item["message"] for item in page["items"]] == [message]
    status, _, one, raw = await server.request("GET", f"/api/v1/users/alice/notifications/{created['notificationId']}", as_user="alice")
    assert (status, one) == (200, created)


async def test_a_message_without_nul_is_stored_unchanged(server):
    # The escape must not touch ordinary text (other readers of the table see it).
    message = "plain text with \\0 and 0"
    await server.notify("alice", message)
    rows = await server.app.runner.read(lambda: database.execute_sql('SELECT "message" FROM "notifications"').fetchall())
    assert [tuple(row) for row in rows] == [(message,)]


@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
async def test_a_notification_id_with_nul_is_404(server, method):
    path = "/api/v1/users/alice/notifications/" + urllib.parse.quote("ntf_\x00x")
    body = {"read": True} if method == "PATCH" else None
    assert_error(await server.request(method, path, body, as_user="alice"), 404)


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", ""),
        ("POST", ""),
        ("GET", "/unread-count"),
        ("POST", "/read-all"),
        ("GET", "/stream"),
        ("GET", "/ntf_0123456789abcdef0123"),
        ("PATCH", "/ntf_0123456789abcdef0123"),
        ("DELETE", "/ntf_0123456789abcdef0123"),
    ],
)
async def test_a_user_id_with_nul_in_the_path_is_422(server, method, suffix):
    # Found by tests/test_api_fuzz.py's kind of input: PostgreSQL refused
    # the parameter and every one of these answered 500 (for an admin).
    path = "/api/v1/users/" + urllib.parse.quote("al\x00ice") + "/notifications" + suffix
    body = {"read": True} if method == "PATCH" else {"type": "info", "message": "m"} if method == "POST" and not suffix else None
    response = await server.request(method, path, body, as_user="root", role="admin")
    assert_error(response, 422, "validation_error")


async def test_a_before_cursor_with_nul_is_400(server):
    query = urllib.parse.urlencode({"before": "ntf_\x00x"})
    assert_error(await server.request("GET", f"/api/v1/users/alice/notifications?{query}", as_user="alice"), 400)


async def test_login_with_nul_in_the_user_id_is_401(server):
    response = await server.request("POST", "/api/v1/auth/login", {"userId": "al\x00ice", "password": "pw"})
    assert_error(response, 401)


#: Opens the database named by argv[1], says so, waits for a line on stdin
#: (so that all processes begin at the same moment), creates the schema.
CREATE_SCHEMA = """
import sys
from models.tables import create_schema, database, open_database
database.initialize(open_database(sys.argv[1]))
database.connect()
print("connected", flush=True)
sys.stdin.readline()
print(create_schema())
"""


def test_processes_creating_the_schema_at_once_all_succeed(new_db_url):
    url = new_db_url("schema")
    processes = [
        subprocess.Popen([sys.executable, "-c", CREATE_SCHEMA, url], cwd=ROOT, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = []
    try:
        # Every process has connected before any is released.
        for process in processes:
            assert process.stdout.readline().strip() == "connected", process.stderr.read()
        for process in processes:
            process.stdin.write("go\n")
            process.stdin.flush()
        results = [(*process.communicate(timeout=30), process.returncode) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert [(out.strip(), code) for out, _, code in results] == [("1", 0)] * 4, [err for _, err, _ in results]
