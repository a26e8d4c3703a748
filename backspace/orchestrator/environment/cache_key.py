"""The key of a set-up environment: everything that could make two setups differ.

The backend and what its sandboxes start from (a base image, a snapshot), the repository, the
setup and maintenance commands, the hosts setup may reach, and the content of the repository's
`cache_key` files. Two runs with the same key may share an environment; a change to any part
makes a new one. The repository is part of the key: one repository's setup never prepares
another's sandbox.
"""

from __future__ import annotations

import hashlib
import json

from backspace.orchestrator.egress.hosts import HostList

VERSION = 1  # raise when what a layer holds changes shape


def cache_key(
    *,
    backend: str,
    identity: str,
    repository: str,
    setup: str,
    maintenance: str | None,
    setup_hosts: HostList,
    files: list[tuple[str, str]],
) -> str:
    """A 64-character hex digest of the parts, in a fixed JSON form."""
    parts = {
        "version": VERSION,
        "backend": backend,
        "identity": identity,
        "repository": repository,
        "setup": setup,
        "maintenance": maintenance,
        "setup_hosts": sorted(setup_hosts),
        "files": files,
    }
    encoded = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()
