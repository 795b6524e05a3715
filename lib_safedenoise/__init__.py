"""Safe Denoiser: training-free negation of image sets during diffusion sampling.

A pure library (it never imports the WebUI's ``modules`` except through ``lib_safedenoise.webui.host``),
implementing Kim et al., "Training-Free Safe Denoisers for Safe Use of Diffusion Models"
(arXiv 2502.08011) for the AUTOMATIC1111 Stable Diffusion WebUI and its forks.
"""

ENGINE_VERSION = "0.3.1"
