"""The README's configuration table names every server option (flag and env variable)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from edgeq_server.config import Config

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_config_field_is_in_the_readme_table() -> None:
    missing = [
        f.name
        for f in dataclasses.fields(Config)
        if f.name != "grpc_options"
        and f"| `--{f.name.replace('_', '-')}` | `{Config.env_name(f.name)}` |" not in README
    ]
    assert missing == []
