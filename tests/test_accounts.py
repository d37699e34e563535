"""reconcile.local.accounts: the user database under --root."""

from __future__ import annotations

import pwd
from pathlib import Path

import pytest

from reconcile.local.accounts import (Account, PasswdEntry, UserDatabaseUnreadable, lookup_accounts,
                                      names_by_uid, parse_passwd)
from reconcile.common.model import UserProblem

PASSWD = """\
root:x:0:0:root:/root:/bin/bash
# a comment
alice:x:5001:5001:Alice:/home/alice:/bin/bash
bob:x:5002:5002::/home/bob:/bin/sh
broken line without fields
carol:x:notanumber:5003::/home/carol:/bin/sh
relative:x:5004:5004::home/relative:/bin/sh
alice:x:9999:9999:second alice entry is ignored:/elsewhere:/bin/sh

"""


def make_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    (root / "home" / "alice").mkdir(parents=True)
    return root


def test_parse_passwd_skips_comments_and_malformed_lines() -> None:
    assert parse_passwd(PASSWD) == {
        "root": PasswdEntry("root", 0, 0, "/root"),
        "alice": PasswdEntry("alice", 5001, 5001, "/home/alice"),
        "bob": PasswdEntry("bob", 5002, 5002, "/home/bob"),
        "relative": PasswdEntry("relative", 5004, 5004, "home/relative"),
    }


def test_lookup_under_a_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    found = lookup_accounts(root, ["alice", "bob", "carol", "dave", "relative"])
    assert found == {
        "alice": Account("alice", 5001, 5001, root / "home" / "alice", "/home/alice"),
        "bob": UserProblem("bob", f"home folder {root}/home/bob does not exist"),
        "carol": UserProblem("carol", f"no such account in {root}/etc/passwd"),
        "dave": UserProblem("dave", f"no such account in {root}/etc/passwd"),
        "relative": UserProblem("relative", f"home folder 'home/relative' in {root}/etc/passwd is not an absolute path"),
    }


def test_a_home_that_is_a_file(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "home" / "bob").write_text("")
    assert lookup_accounts(root, ["bob"]) == {"bob": UserProblem("bob", f"home folder {root}/home/bob is not a folder")}


def test_a_root_without_passwd(tmp_path: Path) -> None:
    assert lookup_accounts(tmp_path, ["alice"]) == {
        "alice": UserProblem("alice", f"no such account in {tmp_path}/etc/passwd")}


def test_the_system_root_uses_the_system_database() -> None:
    me = pwd.getpwuid(0)
    found = lookup_accounts(Path("/"), [me.pw_name, "no-such-user-claude-auth"])
    assert found[me.pw_name] == Account(me.pw_name, 0, me.pw_gid, Path(me.pw_dir), me.pw_dir)
    assert found["no-such-user-claude-auth"] == UserProblem(
        "no-such-user-claude-auth", "no such account in the system user database")


def test_names_by_uid(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert names_by_uid(root, [0, 5002, 7777]) == {0: "root", 5002: "bob"}
    assert names_by_uid(Path("/"), [0]) == {0: pwd.getpwuid(0).pw_name}
    assert names_by_uid(root, []) == {}


def test_a_passwd_that_cannot_be_read_is_one_clear_error(tmp_path: Path) -> None:
    """Not an empty database (every user "missing") and not a traceback: one message naming the file."""
    root = tmp_path / "root"
    (root / "etc" / "passwd").mkdir(parents=True)
    message = f"cannot read the user database {root}/etc/passwd: Is a directory"
    with pytest.raises(UserDatabaseUnreadable) as raised:
        lookup_accounts(root, ["alice"])
    assert str(raised.value) == message
    with pytest.raises(UserDatabaseUnreadable):
        names_by_uid(root, [5001])
