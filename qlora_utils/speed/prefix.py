"""The opening every prompt of a batch shares (the chat template's system turn and the start of the user turn), run
once instead of once per row: its keys and values are computed for one row and read by every row of the batch.

Without dropout this is the same computation up to floating-point summation order, gradients included (they flow
back through the shared keys and values into the one prefix pass). With LoRA dropout the prefix rows share one
dropout mask instead of drawing one each, so training with it is not bit-identical to training without it."""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

MIN_PREFIX = 4  # shorter shared openings are not worth a second forward pass


class SharedPrefixLayer(DynamicLayer):
    """One layer's keys and values of the shared prefix ([1, heads, P, dim]), read-only: `update` returns them,
    broadcast to the batch, followed by the batch's own keys and values, and stores nothing (so a recomputation
    under gradient checkpointing sees the same cache)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.lazy_initialization(keys, values)
        self.keys, self.values = keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
               ) -> tuple[torch.Tensor, torch.Tensor]:
        rows = key_states.shape[0]
        keys = self.keys.expand(rows, -1, -1, -1).to(key_states.dtype)
        values = self.values.expand(rows, -1, -1, -1).to(value_states.dtype)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


@contextlib.contextmanager
def _layer_flags(decoder: torch.nn.Module, **flags: bool) -> Iterator[None]:
    """Set attributes on every decoder layer for the duration of a block (instance attributes, removed after)."""
    layers = list(decoder.layers)
    saved = [{name: layer.__dict__[name] for name in flags if name in layer.__dict__} for layer in layers]
    for layer in layers:
        for name, value in flags.items():
            setattr(layer, name, value)
    try:
        yield
    finally:
        for layer, old in zip(layers, saved):
            for name in flags:
                if name in old:
                    setattr(layer, name, old[name])
                else:
                    layer.__dict__.pop(name, None)


def prefix_cache(decoder: torch.nn.Module, prefix_ids: torch.Tensor) -> Cache:
    """Run the shared prefix (1-D token ids) once through the decoder and keep its keys and values, read-only. The
    pass is one row long, so it skips gradient checkpointing."""
    cache = DynamicCache(config=decoder.config)
    with _layer_flags(decoder, gradient_checkpointing=False):
        decoder(input_ids=prefix_ids[None], past_key_values=cache, use_cache=False)
    return Cache(layers=[SharedPrefixLayer(layer.keys, layer.values) for layer in cache.layers])


def shared_length(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                  labels: torch.Tensor | None = None) -> int:
    """How many leading tokens every row of a right-padded batch shares, stopping one position before the first
    labelled token (whose prediction needs the hidden state before it) and before any padding."""
    same = (input_ids == input_ids[:1]).all(dim=0)
    if attention_mask is not None:
        same &= attention_mask.bool().all(dim=0)
    length = int(same.long().cumprod(0).sum())
    if labels is not None:
        labelled = (labels != -100).any(dim=0).nonzero()
        if len(labelled):
            length = min(length, int(labelled[0]) - 1)
    return length if length >= MIN_PREFIX else 0


def common_prefix(prompts: Sequence[list[int]]) -> int:
    """How many leading tokens all prompts share, leaving at least one token of each to run (0 when fewer than
    MIN_PREFIX)."""
    shortest = min(len(p) for p in prompts)
    length = next((i for i in range(shortest) if any(p[i] != prompts[0][i] for p in prompts)), shortest)
    length = min(length, shortest - 1)
    return length if length >= MIN_PREFIX else 0


def decoder_hidden(decoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                   prefix: int = 0, cache: Cache | None = None) -> torch.Tensor:
    """The decoder's last hidden states for the positions after the first `prefix` (which every row shares): the
    prefix runs once (or comes from `cache`), the rest of the rows read its keys and values. prefix=0: one plain
    pass over everything."""
    if prefix == 0:
        return decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    if cache is None:
        cache = prefix_cache(decoder, input_ids[0, :prefix])
    mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    with _layer_flags(decoder, _can_checkpoint_with_cache=True):  # the cache is read-only: safe to recompute
        return decoder(input_ids=input_ids[:, prefix:], attention_mask=mask, past_key_values=cache,
                       use_cache=False).last_hidden_state
