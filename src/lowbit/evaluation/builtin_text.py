"""Built-in texts that ship with Python itself (PSF licence, redistributable), for the offline demo.

``python-docs`` has two parts from two different sources, so calibration never sees the
evaluation text:
- ``eval``: the language reference topics in the standard library's ``pydoc_data`` (≈ 465 kB);
- ``calib``: the docstrings of a fixed list of standard-library modules (≈ 340 kB).
Both depend only on the Python version, which is recorded in every result's provenance.
"""

from __future__ import annotations

import importlib
import inspect
import warnings

_CALIB_MODULES = [
    "argparse",
    "asyncio",
    "collections",
    "concurrent.futures",
    "csv",
    "datetime",
    "decimal",
    "email.message",
    "fractions",
    "functools",
    "heapq",
    "http.client",
    "http.server",
    "itertools",
    "json",
    "logging",
    "os",
    "pathlib",
    "random",
    "re",
    "shutil",
    "socket",
    "sqlite3",
    "statistics",
    "string",
    "subprocess",
    "tarfile",
    "textwrap",
    "threading",
    "typing",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "zipfile",
    "ftplib",
    "imaplib",
    "smtplib",
    "configparser",
    "difflib",
    "doctest",
    "pdb",
    "optparse",
    "calendar",
    "ipaddress",
]


def python_docs(part: str) -> str:
    if part == "eval":
        from pydoc_data.topics import topics

        return "\n\n".join(topics[k] for k in sorted(topics))
    return _stdlib_docstrings()


def _stdlib_docstrings() -> str:
    parts: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in _CALIB_MODULES:
            module = importlib.import_module(name)
            if module.__doc__:
                parts.append(inspect.cleandoc(module.__doc__))
            parts.extend(_member_docs(module))
    return "\n\n".join(dict.fromkeys(parts))


def _member_docs(module: object) -> list[str]:
    docs: list[str] = []
    for name in sorted(dir(module)):
        obj = getattr(module, name)
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        docs.append(inspect.getdoc(obj) or "")
        if inspect.isclass(obj):
            docs.extend(
                inspect.getdoc(getattr(obj, m, None)) or ""
                for m in sorted(vars(obj))
                if not m.startswith("_")
            )
    return [d for d in docs if len(d) > 200]
