"""Serving decoders: a continuous-batching engine (``engine``) over a GPT with a per-slot KV
cache, per-request sampling (``params``, ``sampler``), stop strings (``text``), chat prompts
(``chat``), model loading (``model``) and a per-process pool of engines (``pool``).

Plain Python + PyTorch: the control plane's completions routes wrap it; so can a Ray Serve
replica. Nothing is imported here, so that the control plane can import the torch-free parts
(``errors``, ``params``, ``outputs``, ``chat``) without loading torch.
"""
