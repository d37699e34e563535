"""The leak check every test that handles a secret ends with."""

from __future__ import annotations

from typing import Iterable


def assert_no_secrets(texts: Iterable[str | bytes], secrets: Iterable[str]) -> None:
    """Fail if any secret value appears in any of the texts (outputs, logs, files)."""
    secrets = [s for s in secrets if s]
    assert secrets, "a leak check needs at least one secret to look for"
    for index, text in enumerate(texts):
        blob = text.decode(errors="replace") if isinstance(text, bytes) else text
        for secret in secrets:
            # Report only the position, never the value itself.
            assert secret not in blob, f"a secret leaked into output #{index} (secret of length {len(secret)})"
