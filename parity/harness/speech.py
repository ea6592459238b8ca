"""Real speech for the tests (Mimi encodes speech; random noise exercises none of what it learned), from espeak-ng.

espeak-ng comes from the `espeakng-loader` wheel (its `libespeak-ng.so` and `espeak-ng-data`) and is driven through
its C API (speak_lib.h) with ctypes, in AUDIO_OUTPUT_SYNCHRONOUS mode: `espeak_Synth` returns once the callback has
received every buffer. espeak keeps one global synthesiser per process, so it is initialised once, under a lock, and
every synthesis holds that lock. It synthesises at its own rate (22050 Hz, as `espeak_Initialize` reports); the
samples are resampled here with a Kaiser-windowed sinc, polyphase, in numpy (scipy.signal would cost a second to
import).

Determinism: the same text gives the same samples, whatever was synthesised before in the process. espeak's default
voices are NOT deterministic: pitch "flutter" reads a table at an index that is a function-local static in
wavegen.c (AdvanceParameters), never reset, so each utterance depends on everything synthesised before it (measured:
"en" gives a different waveform, and length, on every call; "en+Alex", flutter 0 but the default roughness, still
varies). Hence the variant `VOICE`, which sets `flutter 0` and `roughness 0` (measured identical after any history,
and across processes); and the noise generator (breath, klatt) is reseeded before each utterance with
espeak_ng_SetRandSeed (espeak-ng >= 1.52; it is otherwise seeded from the clock at initialisation).

`available()` says why espeak cannot be used (tests skip with it); `synthesize` raises RuntimeError naming the library
and the step that failed.
"""

from __future__ import annotations

import ctypes
import functools
import math
import threading

import numpy as np

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_CHARS_UTF8 = 1  # espeakSSML (0x10) and espeakPHONEMES (0x100) stay off: the text is read as plain text
_POS_CHARACTER = 1
_ESPEAK_RATE = 1
_EE_OK = 0
_ESPEAK_INITIALIZE_DONT_EXIT = 0x8000

VOICE = "en+michel"  # English with the "michel" variant: male, pitch 82-122 Hz, no flutter, no roughness (see above)
RAND_SEED = 1
RATE_WPM = 175  # espeakRATE_NORMAL, set explicitly so no default can move the samples

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

_lock = threading.Lock()
_engine: _Engine | None = None


class _Engine:
    """The initialised library: its path, native sample rate, and the buffer the synth callback fills."""

    def __init__(self, lib: ctypes.CDLL, path: str, data_path: str):
        self.lib, self.path = lib, path
        self._chunks: list[bytes] = []
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.argtypes = []
        lib.espeak_Synchronize.restype = ctypes.c_int
        self._seed = getattr(lib, "espeak_ng_SetRandSeed", None)  # espeak-ng >= 1.52
        if self._seed is not None:
            self._seed.argtypes = [ctypes.c_long]
            self._seed.restype = ctypes.c_int

        # buflength 0: espeak's default buffer. espeakINITIALIZE_DONT_EXIT: without it espeak calls exit(1) (killing
        # pytest) when its data cannot be loaded; with it, it prints the reason to stderr and returns the rate anyway,
        # and the failure shows at espeak_SetVoiceByName (no voices), whose error names the data path.
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path.encode(), _ESPEAK_INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise RuntimeError(f"espeak-ng ({path}): espeak_Initialize failed (returned {rate}), data at {data_path}")
        self.data_path = data_path
        self.sample_rate = rate
        self._callback = _CALLBACK(self._collect)  # kept referenced: espeak holds the pointer for the process
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n, _events) -> int:
        if wav and n > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * n))
        return 0  # 0 = continue

    def synth(self, text: str) -> np.ndarray:
        """int16 samples at the native rate. Callers hold `_lock`."""
        lib = self.lib
        if (err := lib.espeak_SetVoiceByName(VOICE.encode())) != _EE_OK:
            raise RuntimeError(
                f"espeak-ng ({self.path}): espeak_SetVoiceByName({VOICE!r}) failed ({err}); data at {self.data_path}"
            )
        if (err := lib.espeak_SetParameter(_ESPEAK_RATE, RATE_WPM, 0)) != _EE_OK:
            raise RuntimeError(f"espeak-ng ({self.path}): espeak_SetParameter(espeakRATE, {RATE_WPM}) failed ({err})")
        if self._seed is not None:
            self._seed(RAND_SEED)
        data = text.encode("utf-8")
        self._chunks = []
        try:
            err = lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            if err != _EE_OK:
                raise RuntimeError(f"espeak-ng ({self.path}): espeak_Synth failed ({err}) for {text!r}")
            lib.espeak_Synchronize()
            samples = np.frombuffer(b"".join(self._chunks), dtype=np.int16)
        finally:
            self._chunks = []
        if samples.size == 0:
            raise RuntimeError(f"espeak-ng ({self.path}): no samples produced for {text!r}")
        return samples


def _locate() -> tuple[str, str]:
    """(library path, data path) from the espeakng-loader wheel."""
    import espeakng_loader

    return espeakng_loader.get_library_path(), espeakng_loader.get_data_path()


@functools.cache
def available() -> str | None:
    """None when espeak-ng can be loaded; otherwise the reason it cannot (for pytest.skip)."""
    try:
        lib_path, _ = _locate()
    except ImportError as e:
        return f"espeakng-loader is not installed ({e}); it is in the test extra"
    except RuntimeError as e:  # the loader's own error when espeak-ng-data is missing
        return f"espeakng-loader: {e}"
    try:
        ctypes.CDLL(lib_path)
    except OSError as e:
        return f"cannot load espeak-ng library {lib_path}: {e}"
    return None


def _get_engine() -> _Engine:
    """The process's engine, initialised on first use. Callers hold `_lock`."""
    global _engine
    if _engine is None:
        if (reason := available()) is not None:
            raise RuntimeError(reason)
        lib_path, data_path = _locate()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as e:  # pragma: no cover - available() just loaded it
            raise RuntimeError(f"cannot load espeak-ng library {lib_path}: {e}") from e
        _engine = _Engine(lib, lib_path, data_path)
    return _engine


def _native(text: str) -> tuple[np.ndarray, int]:
    """Uncached: int16 samples at espeak's rate, and that rate."""
    with _lock:
        engine = _get_engine()
        return engine.synth(text), engine.sample_rate


@functools.cache
def _kernel(up: int, down: int, zeros: int = 32, beta: float = 8.6, rolloff: float = 0.94) -> tuple[np.ndarray, int]:
    """Polyphase table (up, 2 * half) of a Kaiser-windowed sinc low-pass, row p for output phase p / up, and half.

    Cutoff: rolloff x the lower Nyquist of the two rates; `zeros` sinc zero-crossings each side; beta 8.6 puts the
    stopband near -85 dB. Each row is normalised to unit sum (exact DC gain at every phase)."""
    fc = 0.5 * min(1.0, up / down) * rolloff  # cycles per input sample
    width = zeros / (2 * fc)  # kernel half-width, input samples
    half = math.ceil(width)
    offsets = np.arange(-half + 1, half + 1)  # taps n = floor(t) + offset
    t = np.arange(up)[:, None] / up - offsets[None, :]  # t - n for each phase and tap
    window = np.i0(beta * np.sqrt(np.clip(1.0 - (t / width) ** 2, 0.0, None))) / np.i0(beta)
    table = 2 * fc * np.sinc(2 * fc * t) * window * (np.abs(t) < width)
    return table / table.sum(axis=1, keepdims=True), half


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """float64 resampling of a 1-D signal by rate_out / rate_in; output length ceil(len(x) * rate_out / rate_in)."""
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    x = np.asarray(x, dtype=np.float64)
    if up == down:
        return x.copy()
    table, half = _kernel(up, down)
    n_out = -(-len(x) * up // down)
    padded = np.concatenate([np.zeros(half), x, np.zeros(half + 1)])
    taps = np.arange(-half + 1, half + 1) + half  # into `padded`
    out = np.empty(n_out)
    block = 8192  # bounds the (block, 2 * half) gather
    for start in range(0, n_out, block):
        k = np.arange(start, min(start + block, n_out))
        base, phase = np.divmod(k * down, up)
        out[k] = np.einsum("ij,ij->i", padded[base[:, None] + taps[None, :]], table[phase])
    return out


@functools.cache
def _cached(text: str, sample_rate: int) -> np.ndarray:
    samples, native = _native(text)
    out = np.clip(resample(samples / 32768.0, native, sample_rate), -1.0, 1.0).astype(np.float32)
    out.flags.writeable = False
    return out


def synthesize(text: str, *, sample_rate: int = 24000, seconds: float | None = None) -> np.ndarray:
    """float32 mono samples in [-1, 1], shape (T,), of espeak-ng (`VOICE`, 175 wpm) reading `text`.

    Deterministic: the same text and rate give the same samples (cached per process). `seconds` pads with zeros or
    truncates to exactly round(seconds * sample_rate) samples. Returns a fresh, writable array."""
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if not text.strip():
        raise ValueError("text is empty: espeak would produce no samples")
    out = _cached(text, sample_rate)
    if seconds is None:
        return out.copy()
    if seconds < 0:
        raise ValueError(f"seconds must be >= 0, got {seconds}")
    n = round(seconds * sample_rate)
    fitted = np.zeros(n, dtype=np.float32)
    m = min(n, len(out))
    fitted[:m] = out[:m]
    return fitted
