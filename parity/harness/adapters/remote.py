"""An implementation that runs in another interpreter: its own virtual environment, its own pins.

kyutai's MLX port pins numpy < 2.3 and cannot share our environment, so its adapter runs out of process. The proxy here
(`RemoteAdapter`) is an ordinary Adapter on our side; the worker (`python -m parity.harness.adapters.remote
module:attribute`, started with the other interpreter) builds the real adapter there and serves requests:

    one JSON object per line on the worker's stdin -> one JSON object per line on its stdout
    arrays travel as .npy files in a private temporary directory (bit for bit: bfloat16 as its uint16 bits)
    configs travel as their dataclass fields, rebuilt on the other side from the same class

The worker needs only numpy, the packages its adapter imports, and this repository on its path (moshi_spec and
parity.harness.adapters import neither torch nor jax). Anything the adapter prints goes to stderr; a ValueError or
TypeError raised there is raised again here with its message, so bad input reads the same in or out of process.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from parity.harness.adapters import Impl
from parity.harness.adapters.base import Adapter, Built, Inputs, Outputs, State

ROOT = Path(__file__).resolve().parents[3]
_ERRORS = {"ValueError": ValueError, "TypeError": TypeError, "KeyError": KeyError}


class RemoteError(RuntimeError):
    """The worker failed in a way that is not a ValueError/TypeError of the implementation (its traceback inside)."""


class Wire:
    """Encodes values for one side of the conversation: arrays to files in `directory`, dataclasses to fields."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.counter = itertools.count()

    def encode(self, value: Any) -> Any:
        if isinstance(value, np.ndarray | np.generic) and not isinstance(value, np.bool_ | np.number):
            value = np.asarray(value)
        if isinstance(value, np.ndarray):
            path = self.directory / f"{os.getpid()}-{next(self.counter)}.npy"
            native = value.dtype.kind in "biuf" and value.dtype.name != "bfloat16"
            np.save(path, value if native else value.view(f"u{value.dtype.itemsize}"))
            return {"__array__": str(path), "dtype": value.dtype.name}
        if isinstance(value, np.generic):
            return value.item()
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = {f.name: self.encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
            return {"__dataclass__": f"{type(value).__module__}:{type(value).__qualname__}", "fields": fields}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v) for v in value]}
        if isinstance(value, list):
            return [self.encode(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self.encode(v) for k, v in value.items()}
        return value

    def decode(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__array__" in value:
            path = Path(value["__array__"])
            array = np.load(path)
            path.unlink()
            return array if array.dtype.name == value["dtype"] else array.view(_dtype(value["dtype"]))
        if "__dataclass__" in value:
            module, name = value["__dataclass__"].split(":")
            return getattr(importlib.import_module(module), name)(**self.decode(value["fields"]))
        if "__tuple__" in value:
            return tuple(self.decode(v) for v in value["__tuple__"])
        return {k: self.decode(v) for k, v in value.items()}


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class RemoteAdapter(Adapter):
    """The proxy of an adapter running in `python` (another interpreter) as `target` ("module:attribute").

    Args:
        name: the name it is registered under here.
        target: "package.module:Class" of the real adapter, importable by the worker.
        format: the real adapter's converter format (the weights it loads).
        python: the worker's interpreter (its venv's bin/python).
        env: extra environment variables of the worker (PYTHONPATH gets this repository prepended).
    """

    def __init__(self, name: str, *, target: str, format: str, python: str = sys.executable, env: dict | None = None):
        self.name, self.format, self.target, self.python = name, format, target, python
        self.env = dict(env or {})
        self._process: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix=f"parity-{name}-")
        self._wire = Wire(Path(self._tmp.name))

    def _call(self, op: str, **kwargs: Any) -> Any:
        if self._process is None or self._process.poll() is not None:
            env = {**os.environ, **self.env}
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
            self._process = subprocess.Popen(
                [self.python, "-m", "parity.harness.adapters.remote", self.target],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, cwd=ROOT,
            )  # fmt: skip
        assert self._process.stdin and self._process.stdout
        request = {"op": op, "dir": self._tmp.name, "args": self._wire.encode(kwargs)}
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        line = self._process.stdout.readline()
        if not line:
            raise RemoteError(f"{self.name}: worker {self.target} exited with {self._process.wait()} (see stderr)")
        reply = json.loads(line)
        if "error" in reply:
            kind, message = reply["error"]
            raise _ERRORS.get(kind, RemoteError)(message if kind in _ERRORS else f"{kind}: {message}")
        return self._wire.decode(reply["result"])

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.stdin.close()  # type: ignore[union-attr]
            self._process.wait(timeout=30)
        self._tmp.cleanup()

    def supports(self, component: str, cfg: Any) -> str | None:
        return self._call("supports", component=component, cfg=cfg)

    def has_weights(self, component: str) -> bool:
        return self._call("has_weights", component=component)

    def build(self, component: str, cfg: Any, *, dtype: str, options: dict | None = None, init: bool = True) -> Built:
        options = dict(options or {})
        handle = self._call("build", component=component, cfg=cfg, dtype=dtype, options=options, init=init)
        return Built(Impl(self.name, tuple(sorted(options.items()))), component, cfg, dtype, handle)

    def run(self, built: Built, inputs: Inputs, *, entry: str = "forward", capture: tuple[str, ...] = ()) -> Outputs:
        return self._call("run", handle=built.module, inputs=dict(inputs), entry=entry, capture=list(capture))

    def state(self, built: Built) -> State:
        return self._call("state", handle=built.module)

    def load(self, built: Built, state: State) -> None:
        self._call("load", handle=built.module, state=dict(state))


def serve(target: str) -> None:
    """The worker loop: builds `target`'s adapter and answers requests until stdin closes."""
    module, attribute = target.split(":")
    adapter: Adapter = getattr(importlib.import_module(module), attribute)()
    out = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # the adapter's prints must not mix with the replies
    built: dict[int, Built] = {}
    for line in sys.stdin:
        request = json.loads(line)
        wire = Wire(Path(request["dir"]))  # replies' arrays go where the proxy reads (and deletes) them
        try:
            result = _handle(adapter, built, request["op"], wire.decode(request["args"]))
            reply = {"result": wire.encode(result)}
        except Exception as err:  # every failure goes back to the caller, named
            reply = {"error": [type(err).__name__, str(err)]}
        out.write(json.dumps(reply) + "\n")
        out.flush()


def _handle(adapter: Adapter, built: dict[int, Built], op: str, args: dict) -> Any:
    if op == "supports":
        return adapter.supports(args["component"], args["cfg"])
    if op == "has_weights":
        return adapter.has_weights(args["component"])
    if op == "build":
        handle = len(built)
        built[handle] = adapter.build(
            args["component"], args["cfg"], dtype=args["dtype"], options=args["options"], init=args["init"]
        )
        return handle
    if op == "run":
        return adapter.run(built[args["handle"]], args["inputs"], entry=args["entry"], capture=tuple(args["capture"]))
    if op == "state":
        return adapter.state(built[args["handle"]])
    if op == "load":
        return adapter.load(built[args["handle"]], args["state"])
    raise ValueError(f"unknown request {op!r}")


if __name__ == "__main__":
    serve(sys.argv[1])
