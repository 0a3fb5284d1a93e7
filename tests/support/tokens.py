"""Writing tokens files (``--tokens-file``) and the metadata that presents a token."""

from __future__ import annotations

import hashlib


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_toml(*entries: tuple[str, str, list[str], list[str] | None]) -> str:
    out = []
    for name, token, scopes, queues in entries:
        out.append("[[token]]")
        out.append(f'name = "{name}"')
        out.append(f'sha256 = "{sha(token)}"')
        out.append("scopes = [" + ", ".join(f'"{s}"' for s in scopes) + "]")
        if queues is not None:
            out.append("queues = [" + ", ".join(f'"{q}"' for q in queues) + "]")
    return "\n".join(out) + "\n"


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
