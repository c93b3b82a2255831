"""What a core-only install says when a command needs an extra it lacks: the extra to install,
in one line, never a traceback (the modules made unimportable, as where they are not installed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imagefinder.errors import ModelUnavailableError, StoreError


def test_milvus_without_its_client_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from imagefinder.stores.milvus_meta import MilvusCalls

    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(StoreError, match=r"pip install 'imagefinder\[milvus\]'"):
        MilvusCalls("http://127.0.0.1:1", retries=0, timeout_s=1)


def test_a_hugging_face_model_without_transformers_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from imagefinder.encoders.huggingface import load_hf_encoder

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelUnavailableError, match=r"pip install 'imagefinder\[huggingface\]'"):
        load_hf_encoder("some/model", tmp_path)


def test_fine_tuning_without_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from imagefinder.cli import main

    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setenv("IMAGEFINDER_TRACKING__ENABLED", "false")
    result = CliRunner().invoke(main, ["--home", str(tmp_path), "finetune", "--self-supervised"])
    assert result.exit_code == 1 and "pip install 'imagefinder[export]'" in result.output
