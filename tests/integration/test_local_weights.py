"""Real weights from local folders: the spec read from them, its hash, bad folders as one-line errors."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from cli_helpers import invoke

from attrbench.workload.build import build_workload, save_workload
from attrbench.workload.spec import local_spec, preset, spec_from_dict

PROMPT = "t1 t5 t9 t17 t33 t2 t8 t100"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local") / "tiny"
    save_workload(build_workload(preset("tiny"), use_cache=False), folder)
    return folder


def _bad_copy(saved, tmp_path):
    copy = tmp_path / "bad"
    shutil.copytree(saved, copy)
    return copy


def test_local_spec_reads_config_tokenizes_and_round_trips(saved):
    spec = local_spec(saved / "model", saved / "transcoders", PROMPT)
    tiny = preset("tiny")
    assert spec.model.num_hidden_layers == 4 and spec.model.hidden_size == 128 and spec.model.model_type == "qwen3"
    assert spec.transcoders.d_transcoder == tiny.transcoders.d_transcoder and spec.transcoders.skip_connection
    # t1 is BOS: not prepended again. The word-level tokenizer's special tokens t0..t3 also match inside
    # words ("t17" -> "t1" + unknown "7"), which is what the folder's tokenizer does, so it is what we use.
    assert spec.prompt.token_ids == (1, 5, 9, 1, 0, 3, 0, 2, 8, 1, 0)
    assert local_spec(saved / "model", saved / "transcoders", "t5 t9").prompt.token_ids == (1, 5, 9)
    again = spec_from_dict(spec.to_dict())  # what the runner's child does
    assert again == spec and again.content_hash() == spec.content_hash()
    built = build_workload(again)
    assert built.token_ids.tolist() == list(spec.prompt.token_ids) and built.n_layers == 4


def test_content_hash_covers_the_files(saved, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    before = local_spec(copy / "model", copy / "transcoders", PROMPT).content_hash()
    st = os.stat(copy / "transcoders" / "layer_2.safetensors")
    os.utime(copy / "transcoders" / "layer_2.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert local_spec(copy / "model", copy / "transcoders", PROMPT).content_hash() != before


@pytest.mark.parametrize(
    "case", ["missing-model", "no-config", "wrong-type", "layer-count", "shape", "no-prompt", "no-transcoders"]
)
def test_bad_local_folders_are_one_line_usage_errors(saved, tmp_path, capsys, case):
    copy = _bad_copy(saved, tmp_path)
    model, tcs, prompt = copy / "model", copy / "transcoders", PROMPT
    expect = {
        "missing-model": "neither a preset nor an existing folder",
        "no-config": "no config.json",
        "wrong-type": "model_type 'gpt2' is not supported",
        "layer-count": "layer_3.safetensors does not exist",
        "shape": "W_dec",
        "no-prompt": "needs --transcoders DIR and --prompt TEXT",
        "no-transcoders": "needs --transcoders DIR",
    }[case]
    args = None
    if case == "missing-model":
        model = copy / "nothing-here"
    elif case == "no-config":
        (model / "config.json").unlink()
    elif case == "wrong-type":
        cfg = json.loads((model / "config.json").read_text())
        cfg["model_type"] = "gpt2"
        (model / "config.json").write_text(json.dumps(cfg))
    elif case == "layer-count":
        (tcs / "layer_3.safetensors").unlink()
    elif case == "shape":
        import torch
        from safetensors.torch import load_file, save_file

        d = load_file(str(tcs / "layer_1.safetensors"))
        d["W_dec"] = torch.zeros(d["W_dec"].shape[0], 64)
        save_file(d, str(tcs / "layer_1.safetensors"))
    elif case == "no-prompt":
        args = ["run", "--model", str(model), "--transcoders", str(tcs), "--nodes", "10"]
    elif case == "no-transcoders":
        args = ["run", "--model", str(model), "--prompt", prompt, "--nodes", "10"]
    if args is None:
        args = ["run", "--model", str(model), "--transcoders", str(tcs), "--prompt", prompt, "--nodes", "10"]
    code, _, err = invoke(capsys, args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert expect in err, err
