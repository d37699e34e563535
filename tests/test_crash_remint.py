"""Kill -9 `apply` while it replaces live tokens (a re-mint), then check that no old token is lost track of.

A re-mint (here: the roster's token period changed) mints a new token, writes
it into the person's file, records it, and only then revokes the token it
replaces. A kill between the record and the revocation must not leave the
replaced token alive with nothing pointing at it: the next `apply` must find
and revoke it. The create-orphan answer of the chosen person is held back a
little over the journal's settle interval so that the record is written before
the kill (as it is in any run that takes longer than that interval); without
that hold the kill finds only the intents on disk.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import hvac
import pytest
import yaml

from reconcile.common.exitcodes import Exit
from reconcile.local.statefile import Journal
from tests.support.faultproxy import FaultProxy
from tests.support.leaks import assert_no_secrets
from tests.support.openbao import OpenBaoServer
from tests.test_crash import MINT, Sandbox, bao, tool_tokens  # noqa: F401  (bao: the module's fixture)

REVOKE = b"POST /v1/auth/token/revoke-accessor"


@pytest.mark.parametrize("recorded", [True, False], ids=["record-written", "record-not-yet-written"])
def test_a_kill_between_recording_a_new_token_and_revoking_the_old_one_leaks_nothing(
        bao: OpenBaoServer, tmp_path: Path, recorded: bool) -> None:  # noqa: F811
    client = hvac.Client(url=bao.address, token=bao.root_token)
    with FaultProxy(upstream_port=bao.port) as proxy:
        sandbox = Sandbox(tmp_path, bao, proxy, "remint-" + ("a" if recorded else "b"))
        assert sandbox.run("apply")[0] == Exit.OK
        old = dict(tool_tokens(client, sandbox.prefix))
        assert len(old) == 30

        roster = yaml.safe_load(sandbox.roster.read_text())
        roster["vault"]["token_period"] = "720h"  # every token drifts: re-mint, revoke the old one
        sandbox.roster.write_text(yaml.safe_dump(roster))
        process = sandbox.start("apply")
        nth = 5

        def on_reply(head: bytes, number: int) -> bool:
            if recorded and MINT in head and number == nth:
                time.sleep(Journal.SETTLE_INTERVAL + 0.2)  # this mint's settle writes the state file
            return True

        def on_request(head: bytes, number: int) -> bool:
            if REVOKE in head and proxy.seen.get(REVOKE, 0) == nth:
                os.kill(process.pid, signal.SIGKILL)
                return False
            return True

        proxy.count = (MINT, REVOKE)
        proxy.on_request, proxy.on_reply = on_request, on_reply
        out, err = process.communicate(timeout=60)
        sandbox.outputs += [out, err]
        assert process.returncode == -signal.SIGKILL, err
        proxy.on_request = proxy.on_reply = None

        code, out, err = sandbox.run("apply")
        assert code == Exit.OK, err
        state = sandbox.state()
        files = sandbox.token_values()
        in_files = {str(client.auth.token.lookup(value)["data"]["accessor"]) for value in files.values()}
        tokens: dict[str, dict[str, str]] = state["tokens"]  # type: ignore[assignment]
        pending: list[str] = state["pending_revoke"]  # type: ignore[assignment]
        referenced = in_files | {entry["accessor"] for entry in tokens.values()} | set(pending)
        assert set(tool_tokens(client, sandbox.prefix)) - referenced == set(), "a live token nothing references"
        # Without the record, the file's good token has superseded the recorded one: this one
        # apply revokes it too (plan_token), so the plan right after it is empty.
        code, out, err = sandbox.run("plan")
        assert (code, out.splitlines()[-1:]) == (Exit.OK, ["No changes."]), (out, err)
        alive_old = set(old) & set(tool_tokens(client, sandbox.prefix))
        assert alive_old == set(), f"{len(alive_old)} replaced tokens still live"
        assert set(tool_tokens(client, sandbox.prefix)) == in_files
        assert_no_secrets(sandbox.outputs, set(files.values()) | {bao.root_token})
