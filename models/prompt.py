"""The Seg-Zero user prompt (SPEC.md section 2, paper Figure 4) and its ablation variants.

The released checkpoints were trained on the exact text below (no spaces between the pieces):

    Please find '{Question}' with bbox and points.
    Compare the difference between objects and find the most closely matched one.
    Output the thinking process in <think> </think> and final answer in <answer> </answer> tags.
    Output the one bbox and points of two largest inscribed circles inside the interested object in JSON format.
    i.e., <think> thinking process here </think>
    <answer>{Answer}</answer>

{Question} is the query lower-cased with leading/trailing '.' stripped; {Answer} is the verbatim
example ``{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}``.

Ablation variants (the paper names them but does not print their text; the wording here is ours):
- ``with_example=False`` (paper Table 5): the example JSON is removed and the tags stay, so the last
  piece reads ``i.e., <think> thinking process here </think><answer></answer>``.
- ``think=False`` (non-CoT, paper Table 1): the thinking sentence becomes
  ``Output the final answer in <answer> </answer> tags.`` and the last piece
  ``i.e., <answer>{Answer}</answer>`` (or ``i.e., <answer></answer>`` without the example). Train
  this variant without the thinking-format reward (SPEC section 4).

Multi-object mode (``task="multi"``, SPEC section 9, VisionReasoner): :func:`build_multi_object_prompt`,
the authors' current prompt asking for a JSON list of objects (one box and one point each). In the
user turn the image comes first and the text starts with a newline (the authors' training form).

The chat has no system turn of ours: the chat template inserts the model's default system prompt
(Qwen2.5-VL: "You are a helpful assistant."), as in SPEC section 1 step 2.
"""
from __future__ import annotations

from data.types import check_text

EXAMPLE_ANSWER = "{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}"
"""The verbatim example answer of SPEC section 2 (single quotes: it is not valid JSON, on purpose)."""

_FIND = "Please find '{question}' with bbox and points."
_COMPARE = "Compare the difference between objects and find the most closely matched one."
_THINK_FORMAT = (
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
)
_ANSWER_ONLY_FORMAT = "Output the final answer in <answer> </answer> tags."
_WHAT = (
    "Output the one bbox and points of two largest inscribed circles inside the interested object "
    "in JSON format."
)
_THINK_EXAMPLE = "i.e., <think> thinking process here </think><answer>{answer}</answer>"
_ANSWER_ONLY_EXAMPLE = "i.e., <answer>{answer}</answer>"


def normalize_query(query: str) -> str:
    """SPEC section 2, as the authors' code does it: ``query.lower().strip(".")`` (nothing more).

    ValueError when the query is not text (not a ``str``, or a ``str`` that does not encode to
    UTF-8, e.g. a lone surrogate: the tokenizer cannot take it) or is empty once normalised."""
    if not isinstance(query, str):
        raise ValueError(f"query must be a string, got {type(query).__name__}: {query!r:.80}")
    check_text(query, "query")
    question = query.lower().strip(".")
    if not question.strip():
        raise ValueError(f"query is empty after normalisation: {query!r}")
    return question


def build_prompt(query: str, *, with_example: bool = True, think: bool = True) -> str:
    """The user text for one query (SPEC section 2), or one of the ablation variants above."""
    question = normalize_query(query)
    answer = EXAMPLE_ANSWER if with_example else ""
    fmt, example = (_THINK_FORMAT, _THINK_EXAMPLE) if think else (_ANSWER_ONLY_FORMAT, _ANSWER_ONLY_EXAMPLE)
    return "".join(
        [_FIND.format(question=question), _COMPARE, fmt, _WHAT, example.format(answer=answer)]
    )


#: Tasks: "single" (Seg-Zero, SPEC sections 2-4) and "multi" (the object list, SPEC section 9).
TASKS = ("single", "multi")

MULTI_OBJECT_EXAMPLE = ('[{"bbox_2d": [10,100,200,210], "point_2d": [30,110]}, '
                        '{"bbox_2d": [225,296,706,786], "point_2d": [302,410]}]')
"""The verbatim example answer of the multi-object prompt (SPEC section 9)."""

_MULTI_PIECES = (
    'Please find "{question}" with bboxs and points.',
    "Compare the difference between object(s) and find the most closely matched object(s).",
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags.",
    "Output the bbox(es) and point(s) inside the interested object(s) in JSON format.",
    "i.e., <think> thinking process here </think><answer>{answer}</answer>",
)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return task


def normalize_multi_object_query(query: str) -> str:
    """SPEC section 9: the query lower-cased with trailing '.' stripped; ValueError when empty."""
    if not isinstance(query, str):
        raise ValueError(f"query must be a string, got {type(query).__name__}: {query!r}")
    question = query.lower().rstrip(".")
    if not question.strip():
        raise ValueError(f"query is empty after normalisation: {query!r}")
    return question


def build_multi_object_prompt(query: str) -> str:
    """The multi-object user text (SPEC section 9), the pieces concatenated with no space."""
    question = normalize_multi_object_query(query)
    first, *rest = _MULTI_PIECES
    return first.replace("{question}", question) + "".join(rest).replace("{answer}", MULTI_OBJECT_EXAMPLE)


def build_messages(query: str, *, with_example: bool = True, think: bool = True,
                   task: str = "single") -> list[dict]:
    """Chat messages for ``apply_chat_template``: one user turn = [image, prompt text].

    No system message: the template supplies the model's default one. The image itself is passed
    to the processor separately; here it is only a placeholder that places the vision tokens.
    ``task="multi"``: the multi-object prompt, after a newline (``with_example`` / ``think`` are
    the single-object ablations and must keep their defaults).
    """
    if check_task(task) == "multi":
        if not (with_example and think):
            raise ValueError("the multi-object prompt has no --with-example false / --think false variants")
        text = "\n" + build_multi_object_prompt(query)
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    text = build_prompt(query, with_example=with_example, think=think)
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
