"""Cache integrity: a cached workload that was changed or truncated on disk is named and rebuilt, never used.

Before: zeroed thresholds in a cached transcoder, one changed token in ``prompt.json`` or a changed
``rms_norm_eps`` in ``config.json`` were used under the same workload hash (exit 0, wrong graph); a truncated
file failed every later run without naming it; ``.tmp<pid>`` folders stayed in the cache.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from attrbench.errors import UsageError
from attrbench.workload.build import MANIFEST, build_workload
from attrbench.workload.spec import preset
from attrbench.workload.transcoder_files import load, resolve


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_changed_or_truncated_cache_files_are_named_and_rebuilt(cache, capsys):
    spec = preset("tiny")
    fresh = build_workload(spec, use_cache=True)
    (entry,) = (cache / "workloads-ct").iterdir()
    assert (entry / MANIFEST).is_file()
    capsys.readouterr()

    # 1. zeroed thresholds in a cached transcoder (before: 8,387 active features instead of 1,193, exit 0)
    layer0 = entry / "transcoders" / "layer_0.safetensors"
    tensors = load_file(str(layer0))
    tensors["activation_function.threshold"] = torch.zeros_like(tensors["activation_function.threshold"])
    save_file(tensors, str(layer0))
    again = build_workload(spec, use_cache=True)
    err = capsys.readouterr().err
    assert str(layer0) in err and "rebuilding" in err
    assert torch.equal(again.transcoders[0].threshold, fresh.transcoders[0].threshold)

    # 2. one changed token in prompt.json
    prompt = entry / "prompt.json"
    ids = json.loads(prompt.read_text())["token_ids"]
    prompt.write_text(json.dumps({"token_ids": [ids[0], ids[1] + 1, *ids[2:]]}))
    again = build_workload(spec, use_cache=True)
    assert str(prompt) in capsys.readouterr().err
    assert torch.equal(again.token_ids, fresh.token_ids)

    # 3. a changed rms_norm_eps in config.json (before: n_active 0, status ok)
    config = entry / "model" / "config.json"
    cfg = json.loads(config.read_text())
    cfg["rms_norm_eps"] = 10.0
    config.write_text(json.dumps(cfg))
    again = build_workload(spec, use_cache=True)
    assert str(config) in capsys.readouterr().err
    assert again.hf_model.config.rms_norm_eps == fresh.hf_model.config.rms_norm_eps

    # 4. a truncated file (before: every later run failed without naming it, the entry was never rebuilt)
    weights = entry / "model" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(1000)
    again = build_workload(spec, use_cache=True)
    err = capsys.readouterr().err
    assert str(weights) in err and "truncated" in err
    for a, b in zip(again.hf_model.state_dict().values(), fresh.hf_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    # the rebuilt entry verifies: the next read is silent
    build_workload(spec, use_cache=True)
    assert "rebuilding" not in capsys.readouterr().err


def test_stale_temporary_folders_are_removed(cache, capsys):
    spec = preset("tiny")
    stale = cache / "workloads-ct" / f"{spec.content_hash()}.tmp{_dead_pid()}"
    (stale / "model").mkdir(parents=True)
    (stale / "model" / "half-written.bin").write_bytes(b"x" * 100)
    build_workload(spec, use_cache=True)
    assert not stale.exists()
    assert [p.name for p in (cache / "workloads-ct").iterdir()] == [spec.content_hash()]


def test_truncated_user_transcoder_is_refused_with_the_file_named(cache, tmp_path):
    spec = preset("tiny")
    build_workload(spec, use_cache=True)
    (entry,) = (cache / "workloads-ct").iterdir()
    layer1 = entry / "transcoders" / "layer_1.safetensors"
    with open(layer1, "r+b") as f:
        f.truncate(layer1.stat().st_size // 2)
    with pytest.raises(UsageError, match=str(layer1)):
        load(resolve(entry / "transcoders"))
