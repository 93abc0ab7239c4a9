"""Build hook for the optional compiled kernel of ``marketprism.book.l2`` (everything else is in pyproject.toml).

``marketprism/book/_l2fast.c`` is plain C on the CPython API (no build dependencies beyond a C compiler and
the Python headers). The extension is optional: without a compiler or headers the build skips it with a
warning, the install still succeeds, and ``marketprism.book.l2`` runs its pure-Python code instead.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "marketprism.book._l2fast",
            sources=["marketprism/book/_l2fast.c"],
            optional=True,
        )
    ]
)
