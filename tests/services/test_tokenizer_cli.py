import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from contracts.specs import TokenizeSpec
from services.cli import main


def test_tokenizer_train_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.jsonl"
    docs = [{"text": f"The quick brown fox {i} jumps over the lazy dog. " * 8} for i in range(40)]
    corpus.write_text("\n".join(json.dumps(d) for d in docs))
    out = tmp_path / "tokenizer.json"
    argv = ["tokenizer-train", str(corpus), "--output", str(out), "--vocab-size", "300"]
    assert main([*argv, "--special-tokens", "<|endoftext|>", "<|pad|>"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["vocab_size"] == 300 and out.is_file()
    assert main(["tokenizer-train", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl" in capsys.readouterr().err


def test_tokenize_spec_special_tokens() -> None:
    spec = TokenizeSpec(input="in", output="out", special_tokens=["<|endoftext|>", "<|pad|>"])
    assert spec.pretokenizer == "gpt2"
    with pytest.raises(ValidationError, match=re.escape("must start with <|endoftext|>")):
        TokenizeSpec(input="in", output="out", special_tokens=["<|pad|>", "<|endoftext|>"])
    with pytest.raises(ValidationError, match="at least 262"):
        TokenizeSpec(
            input="in", output="out", vocab_size=261, special_tokens=["<|endoftext|>", *"abcde"]
        )
    with pytest.raises(ValidationError, match="pretokenizer"):
        TokenizeSpec(input="in", output="out", pretokenizer="bert")
