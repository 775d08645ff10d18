"""The control plane validates every spec (model and training configs included) without the
training stack: importing the API and the CLI loads no torch, tokenizers or transformers."""

import subprocess
import sys

HEAVY = ("torch", "tokenizers", "transformers", "ray.data", "ray.train")


def test_the_control_plane_does_not_import_the_training_stack() -> None:
    code = (
        "import sys, services.api.app, services.cli, services.scheduler\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
