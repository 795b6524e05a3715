"""Write a random-weights SD1.5 checkpoint (original LDM key layout, fp16 safetensors, about 2 GB) for the
real-WebUI suite (``SD_WEBUI_CKPT``). Unlike the A1111 test server's empty checkpoint, whose zero weights make every
image uniform grey, its images are coloured noise that the extension's correction visibly changes.

Run it with the interpreter of an AUTOMATIC1111 WebUI environment (it needs ``ldm`` from the WebUI's
``repositories/stable-diffusion-stability-ai``, ``omegaconf``, ``pytorch_lightning``, ``transformers``,
``safetensors``) and the offline tokenizer cache of ``make_hf_cache.py``:

    <a1111-python> tests/webui/harness/make_random_sd15.py <out.safetensors> \
        --webui-dir <a1111-root> --hf-home <hf_home> [--seed 1234]

It peaks at about 9 GB of memory (the fp32 model plus its fp16 copy; 7.2 GB maximum RSS measured with torch
2.12.1): run nothing else memory-hungry meanwhile. It takes 30-100 s on 2 CPU cores and writes nothing into the
WebUI root. The output is deterministic for a given seed and library versions: seed 1234 with the AUTOMATIC1111 v1.10.1
environment of tests/webui/README.md gives the short hash (sha256) 876c083973.

What it does:
1. ``transformers.CLIPTextModel.from_pretrained`` becomes a random initialisation from the cached config (there are
   no CLIP weights offline; ldm's ``FrozenCLIPEmbedder`` calls it);
2. seeds torch, then builds ``LatentDiffusion`` from the WebUI's ``configs/v1-inference.yaml`` with PyTorch's
   default initialisation;
3. re-initialises the 39 layers ldm zero-initialises (``zero_module``: the UNet's output conv, the last conv of
   each of the 22 ResBlocks, the ``proj_out`` of each of the 16 SpatialTransformers), or the UNet's output would
   not depend on its input;
4. saves every tensor of the state dict, floating-point ones as fp16.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ZERO_INITIALISED_LAYERS = 39  # in the SD1.5 UNet of configs/v1-inference.yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the .safetensors file to write")
    parser.add_argument("--webui-dir", type=Path, default=Path.cwd(),
                        help="the AUTOMATIC1111 WebUI root, with repositories/stable-diffusion-stability-ai "
                             "(default: the current directory)")
    parser.add_argument("--hf-home", type=Path, required=True,
                        help="the offline HF cache with openai/clip-vit-large-patch14 (make_hf_cache.py)")
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    webui = args.webui_dir.resolve()
    ldm_root = webui / "repositories" / "stable-diffusion-stability-ai"
    config_path = webui / "configs" / "v1-inference.yaml"
    if not (ldm_root / "ldm").is_dir() or not config_path.is_file():
        sys.exit(f"{webui} is not an AUTOMATIC1111 root with repositories/stable-diffusion-stability-ai "
                 "and configs/v1-inference.yaml")
    hf_home = args.hf_home.resolve()
    os.environ.update(HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"),
                      HUGGINGFACE_HUB_CACHE=str(hf_home / "hub"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    sys.dont_write_bytecode = True  # nothing written into the WebUI's repositories
    sys.path.insert(0, str(ldm_root))

    import torch
    import transformers
    from omegaconf import OmegaConf
    from safetensors.torch import save_file

    def random_text_model(name, *unused_args, **unused_kwargs):
        return transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(name))

    transformers.CLIPTextModel.from_pretrained = random_text_model

    from ldm.util import instantiate_from_config

    torch.manual_seed(args.seed)
    model = instantiate_from_config(OmegaConf.load(config_path).model)

    reinitialised = 0
    with torch.no_grad():
        for module in model.model.diffusion_model.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) \
                    and not module.weight.any() and (module.bias is None or not module.bias.any()):
                module.reset_parameters()
                reinitialised += 1
    if reinitialised != ZERO_INITIALISED_LAYERS:
        sys.exit(f"expected {ZERO_INITIALISED_LAYERS} zero-initialised UNet layers, found {reinitialised}")

    tensors = {}
    for key, value in model.state_dict().items():
        tensors[key] = (value.half() if value.is_floating_point() else value).contiguous()
    del model
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out))
    print(f"wrote {args.out}: {len(tensors)} tensors, {args.out.stat().st_size / 2**30:.2f} GiB, "
          f"{reinitialised} zero-initialised layers re-initialised, seed {args.seed}")


if __name__ == "__main__":
    main()
