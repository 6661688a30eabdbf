"""Small models used across the core tests, and a runner for process-wide settings."""

import os
import subprocess
import sys

import jax.numpy as jnp

import caskax as cx


class Line(cx.Module):
    a: cx.Param
    b: cx.Param

    def __init__(self, name="line", a=None, b=None):
        super().__init__(name)
        self.a = cx.Param("a", a)
        self.b = cx.Param("b", b)

    @cx.forward
    def __call__(self, x, a, b):
        return a * x + b


class Pair(cx.Module):
    left: cx.Module
    right: cx.Module
    scale: float

    def __init__(self, name="pair", left=None, right=None, scale=1.0):
        super().__init__(name)
        self.left, self.right, self.scale = left, right, scale

    @cx.forward
    def __call__(self, x):
        return self.scale * (self.left(x) + self.right(x))


class Bag(cx.Module):
    items: dict
    stack: tuple

    def __init__(self, name="bag", items=None, stack=()):
        super().__init__(name)
        self.items = dict(items or {})
        self.stack = tuple(stack)

    @cx.forward
    def __call__(self, x):
        return sum(m(x) for m in self.items.values()) + sum(m(x) for m in self.stack)


def xs():
    return jnp.linspace(0.0, 1.0, 4)


class CompileLog:
    """Names of the XLA compilations inside a ``with`` block, from jax's compile log
    (``"jit(f)"`` for a compiled function ``f``), in any thread; ``threads`` holds the
    name of the thread of each."""

    def __enter__(self):
        import logging
        import re

        import jax

        self.names, self.threads = [], []
        pattern = re.compile(r"Finished XLA compilation of (\S+)")

        class _Handler(logging.Handler):
            def emit(handler, record):
                m = pattern.search(record.getMessage())
                if m:
                    self.names.append(m.group(1))
                    self.threads.append(record.threadName)

        self._handler = _Handler(level=logging.DEBUG)
        self._logger = logging.getLogger("jax")
        self._level = self._logger.level
        self._logger.addHandler(self._handler)
        self._logger.setLevel(logging.DEBUG)
        # the process-wide setting, not the context manager: that one is thread-local
        self._log_compiles = jax.config.jax_log_compiles
        jax.config.update("jax_log_compiles", True)
        return self

    def __exit__(self, *exc):
        import jax

        jax.config.update("jax_log_compiles", self._log_compiles)
        self._logger.removeHandler(self._handler)
        self._logger.setLevel(self._level)
        return False


def run_python(code: str, timeout: float = 300, **env) -> str:
    """Run ``code`` in a fresh Python process (for settings that are process-wide, such
    as x64 or the CPU device count), with ``env`` added to the environment; assert it
    exits 0 and return its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout
