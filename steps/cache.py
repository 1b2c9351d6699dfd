"""Cache policy of the library-heavy steps.

ZenML's default cache key covers a step's own source, parameters and inputs, but not the code it
calls: after a fix in ``unimatch`` a cached training step would keep returning the old model. The
policy below adds a fingerprint of the installed library's source files to the key.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from zenml.config.cache_policy import CachePolicy

import unimatch


def library_fingerprint() -> str:
    """SHA-256 over the relative path and bytes of every ``unimatch/**/*.py`` file."""
    package = Path(unimatch.__file__).parent
    digest = hashlib.sha256()
    for file in sorted(package.rglob("*.py")):
        digest.update(file.relative_to(package).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


# Named by import path: resolving a function object would initialise the ZenML store on import.
LIBRARY_CACHE_POLICY = CachePolicy(cache_func=f"{__name__}.library_fingerprint")
