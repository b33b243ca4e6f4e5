"""Builds the tally package: the CPython extension compiles libtally's own
sources (../src) and the tally command (../cli) into one module, linked
statically, so nothing but SQLite's shared library is needed at run time.

    python3 -m venv --system-site-packages VENV
    VENV/bin/pip install --no-build-isolation ./python
"""
import glob
import os
import re

from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def rel(paths):
    return [os.path.relpath(p, HERE) for p in sorted(paths)]


def version():
    with open(os.path.join(ROOT, "include", "tally.h"), encoding="utf-8") as f:
        return re.search(r'#define TALLY_VERSION_STRING "([^"]+)"', f.read()).group(1)


sources = (rel(glob.glob(os.path.join(ROOT, "src", "*.c")))
           + rel(p for p in glob.glob(os.path.join(ROOT, "cli", "*.c")) if os.path.basename(p) != "main.c")
           + rel(glob.glob(os.path.join(HERE, "ext", "*.c"))))

ext = Extension(
    "tally._tally",
    sources=sources,
    include_dirs=[os.path.join(ROOT, d) for d in ("include", "src", "cli")],
    define_macros=[("_GNU_SOURCE", None), ("TALLY_BUILDING", None)],
    extra_compile_args=["-std=gnu11", "-O2", "-fvisibility=hidden",
                        "-include", os.path.join(ROOT, "src", "namespace.h")],
    libraries=["sqlite3", "microhttpd", "curl", "z", "m", "dl"],
    extra_link_args=["-pthread"],
)

setup(
    name="tally",
    version=version(),
    description="Telemetry for machine-learning programs: requests, training steps, cost, energy",
    packages=["tally", "tally.compat"],
    ext_modules=[ext],
    entry_points={"console_scripts": ["tally = tally.__main__:main"]},
    python_requires=">=3.9",
)
