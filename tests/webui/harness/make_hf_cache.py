"""Build an offline Hugging Face cache for ``openai/clip-vit-large-patch14`` (the tokenizer and config the SD1
text encoder loads), from the vocabulary bundled with the ``open_clip`` package. No network access.

Run it with the WebUI's interpreter (it needs ``open_clip``; ``transformers``, if installed, checks the result):

    <webui-python> tests/webui/harness/make_hf_cache.py <hf_home>

then start the WebUI with ``HF_HOME=<hf_home> HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1`` (the suite:
``SD_WEBUI_HF_HOME=<hf_home>``). The check: the tokenizer gives ``[49406, 320, 1125, 539, 320, 2368, 49407]`` for
"a photo of a cat".

Layout (what ``huggingface_hub`` looks up offline):
``<hf_home>/hub/models--openai--clip-vit-large-patch14/{refs/main, snapshots/<rev>/...}`` and
``<hf_home>/hub/version.txt`` (``1``; without it transformers 4.30 warns on every import that its cache layout was
updated).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import sys
from pathlib import Path

REPO_ID = "openai/clip-vit-large-patch14"
# Any 40-hex revision works offline (refs/main names it); this is the upstream one at the time of writing.
REVISION = "32bd64288804d66eefd0ccbe215aa642df71cc41"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
EXPECTED_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's byte -> printable-character table (``clip/simple_tokenizer.py``)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(2 ** 8):
        if b not in bs:
            bs.append(b)
            cs.append(2 ** 8 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def bundled_vocabulary() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("open_clip is not installed in this interpreter: run this script with the WebUI's python")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        sys.exit(f"open_clip has no bundled vocabulary at {path}")
    return path


def tokenizer_files(vocabulary_gz: Path) -> dict[str, str]:
    lines = gzip.open(vocabulary_gz).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]  # 48894 merges, as CLIP's SimpleTokenizer reads them
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += [BOS, EOS]
    assert len(vocab) == 49408, len(vocab)
    # Special tokens as plain strings: transformers 4.30.2 rejects the AddedToken dicts newer files use
    # ("special token unk_token has to be either str or AddedToken").
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    tokenizer_config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
                        "errors": "replace", "add_prefix_space": False, **special}
    text_config = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                   "projection_dim": 768, "layer_norm_eps": 1e-5, "bos_token_id": 0, "pad_token_id": 1,
                   "eos_token_id": 2, "dropout": 0.0, "attention_dropout": 0.0, "initializer_range": 0.02,
                   "initializer_factor": 1.0}
    vision_config = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "patch_size": 14, "image_size": 224, "num_channels": 3,
                     "hidden_act": "quick_gelu", "projection_dim": 768, "layer_norm_eps": 1e-5, "dropout": 0.0,
                     "attention_dropout": 0.0, "initializer_range": 0.02, "initializer_factor": 1.0}
    config = {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": 768,
              "logit_scale_init_value": 2.6592, "initializer_factor": 1.0, "torch_dtype": "float32",
              "text_config": text_config, "vision_config": vision_config}
    return {
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "vocab.json": json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=2),
        "special_tokens_map.json": json.dumps(special, indent=2),
        "config.json": json.dumps(config, indent=2),
    }


def write_cache(hf_home: Path, files: dict[str, str]) -> Path:
    hub = hf_home / "hub"
    repo = hub / ("models--" + REPO_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (snapshot / name).write_text(text, encoding="utf-8")
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    (hub / "version.txt").write_text("1")
    return snapshot


def check(hf_home: Path) -> None:
    """Tokenise with transformers from the cache, offline, in this process."""
    import os
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"),
                      HUGGINGFACE_HUB_CACHE=str(hf_home / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    try:
        from transformers import CLIPTokenizer
    except ImportError:
        print("transformers is not installed here: skipped the tokeniser check")
        return
    ids = CLIPTokenizer.from_pretrained(REPO_ID).encode("a photo of a cat")
    if ids != EXPECTED_IDS:
        sys.exit(f"tokeniser check failed: {ids} != {EXPECTED_IDS}")
    print(f"tokeniser check passed: {ids}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("hf_home", type=Path, help="the folder to use as HF_HOME (created if missing)")
    parser.add_argument("--no-check", action="store_true", help="do not tokenise with transformers afterwards")
    args = parser.parse_args()
    hf_home = args.hf_home.resolve()
    snapshot = write_cache(hf_home, tokenizer_files(bundled_vocabulary()))
    print(f"wrote {snapshot}")
    if not args.no_check:
        check(hf_home)


if __name__ == "__main__":
    main()
