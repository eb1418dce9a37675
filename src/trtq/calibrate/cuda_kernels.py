"""CUDA C kernels compiled once with NVRTC, kept as CUBIN in a disk cache, launched on torch streams.

Why not `torch.cuda._compile_kernel`: it compiles one kernel per call (three compiles of the same
source for the statistics), needs a CUDA toolkit for its include paths (CUDA_HOME), and caches
nothing, so every `--device cuda` run paid the compilation again. Here one NVRTC call builds all
kernels of a source for the GPU's architecture; the CUBIN goes to
`$TRTQ_CACHE_DIR` (default `$XDG_CACHE_HOME/trtq`, else `~/.cache/trtq`) under `kernels/`, keyed
by the source, the compile options, the NVRTC version and the architecture, so a later run only
loads it (`cuModuleLoadData`). The NVRTC library is the one PyTorch's CUDA wheels bring
(`libnvrtc.so.<major>`); the driver API is `libcuda`. Both are called through ctypes, as PyTorch
itself does for its run-time kernels.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from trtq._io import atomic_write_bytes
from trtq.errors import TrtqError

CACHE_FORMAT = b"trtq-cubin-1"
"""First line of a cache file; bump when the file layout or the key changes meaning."""

_OPTIONS: tuple[str, ...] = ()
"""NVRTC options besides the architecture (part of the cache key); NVRTC's defaults keep IEEE float math."""


def cache_dir() -> Path:
    """Where trtq keeps files that outlive a run: $TRTQ_CACHE_DIR, $XDG_CACHE_HOME/trtq or ~/.cache/trtq."""
    explicit = os.environ.get("TRTQ_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "trtq"


@dataclass(frozen=True)
class LoadedKernels:
    """Kernels of one source on one device, and where they came from."""

    kernels: dict[str, Kernel]
    cached: bool
    """True when the CUBIN was read from the disk cache, False when NVRTC compiled it in this run."""
    path: Path | None
    """The cache file (None when it could not be written)."""
    compile_seconds: float
    note: str
    """Why the CUBIN was not cached, when it was not."""


class Kernel:
    """One `extern "C" __global__` function; `signature` gives its parameters: p pointer, i int32."""

    def __init__(self, function: ctypes.c_void_p, signature: str, device: torch.device) -> None:
        self._function = function
        self._signature = signature
        self._device = device

    def __call__(self, grid: tuple[int, int, int], block: tuple[int, int, int], args: Sequence[object]) -> None:
        """Launch on torch's current stream of the kernel's device (captured when that stream captures)."""
        if len(args) != len(self._signature):
            raise TypeError(f"kernel takes {len(self._signature)} arguments, got {len(args)}")
        values: list[ctypes.c_void_p | ctypes.c_int] = []
        for kind, arg in zip(self._signature, args):
            if kind == "p":
                values.append(ctypes.c_void_p(arg.data_ptr() if isinstance(arg, torch.Tensor) else int(arg)))  # type: ignore[call-overload]
            else:
                values.append(ctypes.c_int(int(arg)))  # type: ignore[call-overload]
        params = (ctypes.c_void_p * len(values))(*(ctypes.addressof(v) for v in values))
        stream = torch.cuda.current_stream(self._device).cuda_stream
        if torch.cuda.current_device() != self._device.index:  # the module lives in this device's context
            with torch.cuda.device(self._device):
                self._launch(grid, block, stream, params)
        else:
            self._launch(grid, block, stream, params)

    def _launch(self, grid: tuple[int, int, int], block: tuple[int, int, int], stream: int, params: ctypes.Array) -> None:
        _check(_driver().cuLaunchKernel(self._function, grid[0], grid[1], grid[2], block[0], block[1], block[2], 0,
                                        stream, params, None), "cuLaunchKernel")


_LOADED: dict[tuple[int, str], LoadedKernels] = {}
_LOCK = threading.Lock()


def load_kernels(source: str, signatures: dict[str, str], device: torch.device, label: str) -> LoadedKernels:
    """The kernels `signatures` names, built from `source` for `device`: from the cache, else compiled and cached.

    Modules are kept for the life of the process (one per device and source), so later
    backends in the same process reuse them. Raises RuntimeError or OSError when this machine
    has no NVRTC or driver to build or load them (callers fall back to another engine).
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    arch = f"sm_{major}{minor}"
    options = (f"--gpu-architecture={arch}", *_OPTIONS)
    path = cache_file(source, options, _nvrtc_version(), label)
    with _LOCK:
        loaded = _LOADED.get((index, path.name))
        if loaded is not None:
            return loaded
        cubin = _read_cached(path)
        cached, seconds, note = cubin is not None, 0.0, ""
        with torch.cuda.device(index):
            module = _load_module(cubin) if cubin is not None else None
            if module is None:
                start = time.perf_counter()
                cubin = _compile(source, options, label)
                seconds = time.perf_counter() - start
                module = _load_module(cubin)
                if module is None:
                    raise RuntimeError(f"the driver refused the CUBIN NVRTC built for {arch}")
                cached = False
                note = _write_cached(path, cubin)
            kernels = {name: Kernel(_function(module, name), signature, torch.device("cuda", index))
                       for name, signature in signatures.items()}
        loaded = LoadedKernels(kernels, cached, None if note else path, seconds, note)
        _LOADED[(index, path.name)] = loaded
        return loaded


def cache_file(source: str, options: Sequence[str], nvrtc_version: str, label: str) -> Path:
    """The cache file for `source` built with `options` (they name the architecture) by NVRTC `nvrtc_version`."""
    key = hashlib.sha256("\0".join([CACHE_FORMAT.decode(), source, *options, nvrtc_version]).encode()).hexdigest()
    arch = next((o.split("=", 1)[1] for o in options if o.startswith("--gpu-architecture=")), "any")
    return cache_dir() / "kernels" / f"{label}-{arch}-nvrtc{nvrtc_version}-{key[:16]}.cubin"


def _read_cached(path: Path) -> bytes | None:
    """The CUBIN stored at `path`, or None when it is absent, truncated or altered (its digest disagrees)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    header, _, rest = data.partition(b"\n")
    digest, _, cubin = rest.partition(b"\n")
    if header != CACHE_FORMAT or hashlib.sha256(cubin).hexdigest().encode() != digest:
        return None
    return cubin


def _write_cached(path: Path, cubin: bytes) -> str:
    """Store `cubin` at `path` atomically; '' on success, else why not (the run goes on without a cache)."""
    try:
        atomic_write_bytes(path, CACHE_FORMAT + b"\n" + hashlib.sha256(cubin).hexdigest().encode() + b"\n" + cubin,
                           announce=False)
    except (TrtqError, OSError) as exc:
        reason = exc.message if isinstance(exc, TrtqError) else str(exc)
        return f"not cached ({reason.rstrip('.')}; set TRTQ_CACHE_DIR to a writable folder)"
    return ""


# --- NVRTC -------------------------------------------------------------------------------------

_NVRTC: ctypes.CDLL | None = None
_CUDA: ctypes.CDLL | None = None


def _nvrtc() -> ctypes.CDLL:
    """libnvrtc: the one already loaded by PyTorch's CUDA wheels, else found beside them or in CUDA_HOME."""
    global _NVRTC
    if _NVRTC is not None:
        return _NVRTC
    major = (torch.version.cuda or "").split(".")[0]
    names = [f"libnvrtc.so.{major}"] if major else []
    names.append("libnvrtc.so")
    for root in [*sys.path, os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"]:
        if root:
            names += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", f"libnvrtc.so.{major or '*'}")))
            names += sorted(glob.glob(os.path.join(root, "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so.*")))
            names += sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")))
    errors = []
    for name in dict.fromkeys(names):
        try:
            lib = ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
            continue
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        _NVRTC = lib
        return lib
    raise OSError(f"no NVRTC library found ({errors[0] if errors else 'no candidates'})")


def _nvrtc_version() -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _nvrtc_check(_nvrtc().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return f"{major.value}.{minor.value}"


def _nvrtc_check(result: int, what: str) -> None:
    if result != 0:
        raise RuntimeError(f"{what} failed: {_nvrtc().nvrtcGetErrorString(result).decode()}")


def _compile(source: str, options: Sequence[str], label: str) -> bytes:
    """CUBIN of `source` (every extern "C" kernel in it) for the architecture in `options`."""
    lib = _nvrtc()
    program = ctypes.c_void_p()
    _nvrtc_check(lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), f"{label}.cu".encode(), 0, None, None),
                 "nvrtcCreateProgram")
    try:
        encoded = [o.encode() for o in options]
        result = lib.nvrtcCompileProgram(program, len(encoded), (ctypes.c_char_p * len(encoded))(*encoded))
        if result != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(program, log)
            raise RuntimeError(f"NVRTC could not compile {label}: {log.value.decode(errors='replace').strip()}")
        size = ctypes.c_size_t()
        _nvrtc_check(lib.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
        binary = ctypes.create_string_buffer(size.value)
        _nvrtc_check(lib.nvrtcGetCUBIN(program, binary), "nvrtcGetCUBIN")
        return binary.raw
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(program))


# --- driver ------------------------------------------------------------------------------------

def _driver() -> ctypes.CDLL:
    global _CUDA
    if _CUDA is None:
        lib = ctypes.CDLL("libcuda.so.1")
        lib.cuLaunchKernel.argtypes = [ctypes.c_void_p, *[ctypes.c_uint] * 6, ctypes.c_uint, ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.c_void_p]
        lib.cuModuleLoadData.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.cuModuleGetFunction.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p]
        _CUDA = lib
    return _CUDA


def _check(result: int, what: str) -> None:
    if result != 0:
        text = ctypes.c_char_p()
        _driver().cuGetErrorString(result, ctypes.byref(text))
        raise RuntimeError(f"{what} failed: {text.value.decode() if text.value else f'CUDA error {result}'}")


def _load_module(cubin: bytes) -> ctypes.c_void_p | None:
    """The module of `cubin` in the current context, or None when the driver refuses it (e.g. a newer toolchain)."""
    torch.cuda.current_stream()  # makes sure torch has initialised CUDA and made the device's context current
    module = ctypes.c_void_p()
    if _driver().cuModuleLoadData(ctypes.byref(module), cubin) != 0:
        return None
    return module


def _function(module: ctypes.c_void_p, name: str) -> ctypes.c_void_p:
    function = ctypes.c_void_p()
    _check(_driver().cuModuleGetFunction(ctypes.byref(function), module, name.encode()), f"cuModuleGetFunction({name})")
    return function
