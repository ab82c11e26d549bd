"""Build the _mpcore C extension.

Environment switches:
  MPC_DEBUG=1     -O0 -g3, assertions on
  MPC_SANITIZE=1  AddressSanitizer + UBSan (run with LD_PRELOAD of libasan, see README)
  MPC_WERROR=1    warnings are errors (CI)
"""
import os
from glob import glob

from setuptools import Extension, setup


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


cflags = ["-std=c11", "-Wall", "-Wextra", "-D_GNU_SOURCE"]
ldflags = []
if _flag("MPC_DEBUG"):
    cflags += ["-O0", "-g3", "-UNDEBUG"]
if _flag("MPC_SANITIZE"):
    cflags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    ldflags += ["-fsanitize=address,undefined"]
if _flag("MPC_WERROR"):
    cflags += ["-Werror"]

setup(
    ext_modules=[
        Extension(
            "multiprocessing_c._mpcore",
            sources=sorted(glob("_mpcore/*.c")),
            depends=sorted(glob("_mpcore/*.h")),
            extra_compile_args=cflags,
            extra_link_args=ldflags,
            libraries=["rt", "pthread"],
        )
    ],
)
