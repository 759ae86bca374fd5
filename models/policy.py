"""The policy object: Qwen2.5-VL + its processor + the prompt variant (SPEC.md sections 1-2).

:class:`SegZeroPolicy` has ``complete`` (greedy decoding for evaluation) and ``rollout`` (G samples
per prompt for GRPO), both on :mod:`models.rollout`; ``logprobs`` is the training forward
(:class:`models.forward.ResponseLogProbs`). Loading is :mod:`models.loading`, prompt batches
:mod:`models.batch`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from models.batch import PolicyBatch, prepare_inputs
from models.forward import ResponseLogProbs
from models.loading import load_policy
from models.prompt import check_task
from models.rollout import generate


@dataclass
class Rollout:
    """G sampled responses for each of B prompts (samples of one prompt are adjacent rows).

    Attributes:
        response_ids: [N, L] N = B * G; after a row's EOS the ids are pad.
        response_mask: [N, L] 1 up to and including the first EOS (any of ``eos_token_ids``).
        logp: [N, L] float32 log-probs of the sampled tokens under softmax(logits / T); undefined
            where response_mask is 0 (read them through the mask).
        texts: N decoded completions (special tokens removed).
        batch: the B prompts.
        group_size: G.
    """

    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logp: torch.Tensor
    texts: list[str]
    batch: PolicyBatch
    group_size: int



class SegZeroPolicy:
    """Qwen2.5-VL + its processor + the prompt variant: the object the trainer and pipeline use.

    ``model`` is the Hugging Face model (decoding, export); ``logprobs`` is the training forward
    module around it (:class:`ResponseLogProbs`), the unit the trainer shards and checkpoints.
    """

    def __init__(self, model, processor, *, with_example: bool = True, think: bool = True, task: str = "single"):
        self.model = model
        self.logprobs = ResponseLogProbs(model)
        self.processor = processor
        self.with_example = with_example
        self.think = think
        self.task = check_task(task)  # "single" (SPEC 2) or "multi" (the object-list prompt, SPEC 9)
        tok = processor.tokenizer
        self.eos_token_id = int(tok.convert_tokens_to_ids("<|im_end|>"))
        # Every id that ends a response: <|im_end|> first, then those of the generation config
        # (Qwen2.5-VL-Instruct: [<|im_end|>, <|endoftext|>]), as transformers' generate stops.
        config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        config_eos = [] if config_eos is None else [config_eos] if isinstance(config_eos, int) else list(config_eos)
        self.eos_token_ids = list(dict.fromkeys([self.eos_token_id, *map(int, config_eos)]))
        self.pad_token_id = int(tok.pad_token_id if tok.pad_token_id is not None else self.eos_token_id)

    @classmethod
    def from_pretrained(cls, name_or_path, *, with_example=True, think=True, task="single", **load_kwargs):
        model, processor = load_policy(name_or_path, **load_kwargs)
        return cls(model, processor, with_example=with_example, think=think, task=task)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prepare(self, images, queries, *, padding_side: str = "left") -> PolicyBatch:
        return prepare_inputs(
            self.processor, images, queries, with_example=self.with_example, think=self.think, task=self.task,
            padding_side=padding_side,
        ).to(self.device)

    def decode(self, response_ids: torch.Tensor, response_mask: torch.Tensor) -> list[str]:
        """Texts of the masked responses, special tokens (EOS) removed."""
        rows = [ids[: int(n)].tolist() for ids, n in zip(response_ids.cpu(), response_mask.sum(-1).cpu())]
        return self.processor.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def rollout(self, images, queries, group_size: int, *, max_new_tokens: int, temperature: float = 1.0,
                top_p: float = 1.0, greedy: bool = False,
                generator: torch.Generator | Sequence[torch.Generator] | None = None) -> Rollout:
        """G responses per (image, query), sampled (or greedy) with the shared-prefix engine.

        ``generator``: one for the batch or one per prompt (see :func:`models.rollout.generate`)."""
        batch = self.prepare(images, queries)
        out = generate(
            self.model, batch, group_size, max_new_tokens=max_new_tokens,
            eos_token_id=self.eos_token_ids, pad_token_id=self.pad_token_id, greedy=greedy,
            temperature=temperature, top_p=top_p, generator=generator,
        )
        texts = self.decode(out.response_ids, out.response_mask)
        return Rollout(out.response_ids, out.response_mask, out.logp, texts, batch, group_size)

    def complete(self, images, queries, *, max_new_tokens: int = 1024, greedy: bool = True,
                 temperature: float = 1.0, top_p: float = 1.0) -> list[str]:
        """One completion per (image, query): greedy by default (SPEC section 1 step 2)."""
        return self.rollout(images, queries, 1, max_new_tokens=max_new_tokens, temperature=temperature,
                            top_p=top_p, greedy=greedy).texts
