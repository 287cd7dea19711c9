"""The yardstick: circuit-tracer's own ``attribute()`` on a TransformerLens replacement model.

Nothing of circuit-tracer's algorithm is re-implemented here: we build the replacement model from the
workload's HF weights and transcoders (in the order circuit-tracer needs: weights first, transcoders after)
and call the installed package. Phase times come from circuit-tracer's own log lines.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from attrbench.api import AttributeSettings, AttributionResult, Backend
from attrbench.hookspecs import hookimpl
from attrbench.workload.build import BuiltWorkload
from attrbench.workload.transformer_lens import transformer_lens_config

#: circuit-tracer's log line -> our phase name
_PHASE_LINES = {
    "Precomputation completed": "setup",
    "Forward pass completed": "forward",
    "Input vectors built": "targets",
    "Logit attributions completed": "logit_rows",
    "Feature attributions completed": "feature_rows",
}
_PHASE_RE = re.compile(r"^(.*?) in ([0-9.]+)s$")


class _ForwardingLog(io.StringIO):
    """Captures circuit-tracer's stderr (log lines, tqdm bars) and passes each non-empty line on as progress."""

    def __init__(self, progress):
        super().__init__()
        self.progress = progress

    def write(self, text: str) -> int:
        for line in re.split(r"[\r\n]", text):
            if line.strip():
                self.progress(line.strip())
        return super().write(text)


@contextlib.contextmanager
def _fresh_attribution_logger():
    """circuit-tracer logs its phases only when its ``attribution`` logger has no handler yet (it then adds
    one on the current stderr); handlers left there by someone else (pytest's log capture, an application)
    would silence it. They are set aside for the call and put back after."""
    logger = logging.getLogger("attribution")
    saved = logger.handlers[:]
    logger.handlers.clear()
    try:
        yield
    finally:
        logger.handlers[:] = saved


def transcoder_set(workload: BuiltWorkload, device: str, dtype: torch.dtype):
    from circuit_tracer.transcoder.activation_functions import JumpReLU
    from circuit_tracer.transcoder.single_layer_transcoder import SingleLayerTranscoder, TranscoderSet

    d_model = workload.spec.model.hidden_size
    layers = {}
    for layer, w in enumerate(workload.transcoders):
        tc = SingleLayerTranscoder(
            d_model,
            w.W_enc.shape[0],
            JumpReLU(w.threshold.clone(), 0.1),
            layer,
            skip_connection=w.W_skip is not None,
            device=torch.device(device),
            dtype=dtype,
        )
        with torch.no_grad():
            for name in ("W_enc", "W_dec", "b_enc", "b_dec", "W_skip"):
                value = getattr(w, name)
                if value is not None:
                    getattr(tc, name).copy_(value)
        tc.activation_function.threshold.data = tc.activation_function.threshold.data.to(device, dtype)
        layers[layer] = tc
    from attrbench.workload.families import family

    hooks = family(workload.spec.model.model_type)  # where circuit-tracer's configs for the family read/write
    return TranscoderSet(
        layers,
        feature_input_hook=hooks.feature_input_hook,
        feature_output_hook=hooks.feature_output_hook,
        scan=f"attrbench-{workload.spec.content_hash()}",
    )


def build_replacement_model(workload: BuiltWorkload, device: str, dtype: torch.dtype) -> Any:
    """circuit-tracer's TransformerLens replacement model for the workload."""
    from circuit_tracer.replacement_model.replacement_model_transformerlens import (
        TransformerLensReplacementModel,
    )

    from attrbench.workload.families import convert_weights

    cfg = transformer_lens_config(workload, device, dtype)
    model: Any = TransformerLensReplacementModel(cfg, tokenizer=workload.tokenizer)
    state_dict = convert_weights(workload.spec.model, workload.hf_model, cfg)
    # Order matters: a state-dict load after configuring transcoders would replace them with empty tensors.
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    rotary = _rotary_by_attention_type(model)
    tcs = circuit_tracer_transcoders(workload, device, dtype)
    if tcs.feature_input_hook.endswith("hook_normalized") and dtype not in (torch.float32, torch.float64):
        # TransformerLens' RMSNorm calls hook_normalized on its float32 value and casts to the model dtype only
        # after the hook, so circuit-tracer would hand float32 inputs to bf16 transcoders (a dtype error).
        # Cast at the hook first (registered before circuit-tracer's hooks, so they see the cast value):
        # the forward pass is unchanged, the transcoders get what the next layer gets.
        def to_model_dtype(acts, hook):
            return acts.to(dtype)

        for block in model.blocks:
            block.get_submodule(tcs.feature_input_hook).add_hook(to_model_dtype, is_permanent=True)
        model.cast_transcoder_input = True
    model._configure_replacement_model(tcs)
    if rotary:
        # circuit-tracer 0.5.0 shares the *last* layer's RoPE sin/cos with every layer to save memory; with
        # two RoPE bases (Gemma-3: local and global layers) that gives the wrong rotation to one kind. Each
        # attention type gets its own back (one shared copy per type), which keeps HF and TL logits equal.
        for block in model.blocks:
            block.attn.rotary_sin, block.attn.rotary_cos = rotary[block.attn.attn_type]
    return model


def _rotary_by_attention_type(model) -> dict[str, tuple]:
    """RoPE buffers per attention type when the types differ in them (else empty: nothing to restore)."""
    found: dict[str, tuple] = {}
    for block in model.blocks:
        if hasattr(block.attn, "rotary_sin"):
            found.setdefault(block.attn.attn_type, (block.attn.rotary_sin, block.attn.rotary_cos))
    if len(found) < 2 or all(torch.equal(found["local"][i], found["global"][i]) for i in range(2)):
        return {}
    return found


def reference_path(model) -> str:
    """How the yardstick was built, for the results: circuit-tracer backend, architecture, transcoder hooks."""
    cfg = model.cfg
    path = (
        f"circuit-tracer TransformerLensReplacementModel, hand-built HookedTransformerConfig "
        f"({cfg.original_architecture}), weights by TransformerLens' converter, transcoders at "
        f"{model.feature_input_hook} -> {model.original_feature_output_hook}"
    )
    blocks = list(model.blocks)
    if any(b.attn.rotary_sin is not blocks[-1].attn.rotary_sin for b in blocks if hasattr(b.attn, "rotary_sin")):
        path += "; local/global RoPE buffers kept per attention type (circuit-tracer 0.5.0 shares one)"
    if getattr(model, "cast_transcoder_input", False):
        path += f"; {model.feature_input_hook} cast to the model dtype before the transcoders read it"
    return path


def circuit_tracer_transcoders(workload: BuiltWorkload, device: str, dtype: torch.dtype):
    """The very object circuit-tracer's loaders returned for the workload's files (a TranscoderSet or a
    CrossLayerTranscoder); copied when the replacement model is to move it to another device or dtype,
    so that the workload's own stays as read. Workloads built in memory only get one built here."""
    import copy

    ct = workload.ct_transcoders
    if ct is None:
        return transcoder_set(workload, device, dtype)
    if dtype != torch.float32 or str(device) != "cpu":
        ct = copy.deepcopy(ct)
    return ct


@dataclass
class _Prepared:
    model: Any  # circuit-tracer's TransformerLensReplacementModel
    token_ids: torch.Tensor
    n_layers: int


@contextlib.contextmanager
def _timed_ranking(phases: dict[str, float]):
    """Time circuit-tracer's own ``compute_partial_influences`` calls (the ranking phase)."""
    import circuit_tracer.attribution.attribute as ct_attribute

    original = ct_attribute.compute_partial_influences

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            phases["ranking"] = phases.get("ranking", 0.0) + time.perf_counter() - t0

    ct_attribute.compute_partial_influences = timed
    try:
        yield
    finally:
        ct_attribute.compute_partial_influences = original


class ReferenceBackend(Backend):
    name = "reference"
    exact = True
    description = "circuit-tracer 0.5.0 attribute() on its TransformerLens replacement model (the yardstick)"
    yardstick = 0  # circuit-tracer itself: the truth every other backend is compared with

    def cost_model(self) -> str | None:
        return "autograd"

    def prepare(self, workload: BuiltWorkload, device: str, dtype: torch.dtype) -> _Prepared:
        model = build_replacement_model(workload, device, dtype)
        return _Prepared(model, workload.token_ids.to(device), workload.n_layers)

    def attribute(self, prepared: _Prepared, settings: AttributeSettings) -> AttributionResult:
        from circuit_tracer.attribution.attribute import attribute

        phases: dict[str, float] = {}
        log = _ForwardingLog(settings.progress)
        # verbose=True makes circuit-tracer log its phase times; stderr is captured so that its progress
        # bar and log lines do not mix with ours (they reach settings.progress instead).
        with contextlib.redirect_stderr(log), _fresh_attribution_logger(), _timed_ranking(phases):
            graph = attribute(
                prepared.token_ids,
                prepared.model,
                max_n_logits=settings.max_n_logits,
                desired_logit_prob=settings.desired_logit_prob,
                batch_size=settings.batch_size,
                max_feature_nodes=settings.max_feature_nodes,
                update_interval=settings.update_interval,
                verbose=True,
            )
        for line in log.getvalue().splitlines():
            match = _PHASE_RE.match(line.strip())
            if match and match.group(1) in _PHASE_LINES:
                phases[_PHASE_LINES[match.group(1)]] = float(match.group(2))
        if "feature_rows" in phases and "ranking" in phases:
            phases["feature_rows"] -= phases["ranking"]
        return AttributionResult(
            input_tokens=graph.input_tokens.cpu(),
            logit_token_ids=graph.logit_token_ids.cpu(),
            logit_probabilities=graph.logit_probabilities.float().cpu(),
            active_features=graph.active_features.cpu(),
            activation_values=graph.activation_values.float().cpu(),
            selected_features=graph.selected_features.cpu(),
            adjacency_matrix=graph.adjacency_matrix.float().cpu(),
            n_layers=prepared.n_layers,
            phases_s=phases,
            info={"reference_path": reference_path(prepared.model)},
        )


@hookimpl
def register_backends(register):
    register(ReferenceBackend())
