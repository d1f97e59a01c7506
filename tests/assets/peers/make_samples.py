"""Writes the TRL and ms-swift sample files in ``tests/assets/peers/{trl,swift}/``: small files in each layout
exactly as those projects document it (TRL ``docs/source/dataset_formats.md``; ms-swift
``docs/source_en/Customization/Custom-dataset.md``), on one small task (is an object an animal, a tool or a
food?). LLaMA-Factory's files are its own demo data (``llamafactory/``).

Run from the repository root: ``python tests/assets/peers/make_samples.py``; the files are committed.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
CATEGORIES = {
    "an animal": ["cat", "dog", "cow", "horse", "sheep", "goat", "duck", "hen", "fox", "owl", "bee", "frog"],
    "a tool": [
        "hammer",
        "saw",
        "drill",
        "wrench",
        "spade",
        "axe",
        "file",
        "chisel",
        "rake",
        "plane",
        "awl",
        "vice",
    ],
    "a food": [
        "bread",
        "apple",
        "rice",
        "cheese",
        "soup",
        "pear",
        "plum",
        "bean",
        "egg",
        "jam",
        "cake",
        "nut",
    ],
}
ROWS = 40


def questions(seed: int) -> list[tuple[str, str, str]]:
    """``(object, right category, wrong category)``, seeded."""
    rng = random.Random(seed)
    items = [(thing, kind) for kind, things in CATEGORIES.items() for thing in things]
    out = []
    for _ in range(ROWS):
        thing, kind = rng.choice(items)
        wrong = rng.choice([other for other in CATEGORIES if other != kind])
        out.append((thing, kind, wrong))
    return out


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def ask(thing: str) -> str:
    return f"Is a {thing} an animal, a tool or a food?"


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def trl() -> None:
    out = HERE / "trl"
    q = questions(1)
    write_jsonl(
        out / "preference_conversational.jsonl",
        [
            {
                "prompt": [user(ask(t))],
                "chosen": [assistant(f"It is {r}.")],
                "rejected": [assistant(f"It is {w}.")],
            }
            for t, r, w in q
        ],
    )
    write_jsonl(
        out / "preference_standard.jsonl",
        [{"prompt": f"A {t} is", "chosen": f" {r}.", "rejected": f" {w}."} for t, r, w in q],
    )
    write_jsonl(
        out / "implicit_prompt_standard.jsonl",
        [{"chosen": f"A {t} is {r}.", "rejected": f"A {t} is {w}."} for t, r, w in q],
    )
    write_jsonl(
        out / "implicit_prompt_conversational.jsonl",
        [
            {
                "chosen": [user(ask(t)), assistant(f"It is {r}.")],
                "rejected": [user(ask(t)), assistant(f"It is {w}.")],
            }
            for t, r, w in q
        ],
    )
    write_jsonl(
        out / "unpaired_preference.jsonl",
        [
            {
                "prompt": [user(ask(t))],
                "completion": [assistant(f"It is {r if i % 2 else w}.")],
                "label": bool(i % 2),
            }
            for i, (t, r, w) in enumerate(q)
        ],
    )
    write_jsonl(
        out / "prompt_completion.jsonl", [{"prompt": f"A {t} is", "completion": f" {r}."} for t, r, _ in q]
    )
    write_jsonl(out / "language_modeling.jsonl", [{"text": f"A {t} is {r}."} for t, r, _ in q])
    write_jsonl(
        out / "conversational_language_modeling.jsonl",
        [{"messages": [user(ask(t)), assistant(f"It is {r}.")]} for t, r, _ in q],
    )
    write_jsonl(
        out / "prompt_only.jsonl", [{"prompt": [user(ask(t))], "answer": f"It is {r}."} for t, r, _ in q]
    )
    schema = {
        "type": "function",
        "function": {
            "name": "lookup_category",
            "description": "The category of an object.",
            "parameters": {
                "type": "object",
                "properties": {"object": {"type": "string"}},
                "required": ["object"],
            },
        },
    }
    write_jsonl(
        out / "tool_calling.jsonl",
        [
            {
                "messages": [
                    user(ask(t)),
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "type": "function",
                                "function": {"name": "lookup_category", "arguments": {"object": t}},
                            }
                        ],
                    },
                    {"role": "tool", "name": "lookup_category", "content": r},
                    assistant(f"It is {r}."),
                ],
                "tools": [schema],
            }
            for t, r, _ in q
        ],
    )


def swift() -> None:
    out = HERE / "swift"
    q = questions(2)
    system = {"role": "system", "content": "You sort objects into categories."}
    write_jsonl(
        out / "sft_messages.jsonl",
        [{"messages": [system, user(ask(t)), assistant(f"It is {r}.")]} for t, r, _ in q],
    )
    write_jsonl(
        out / "dpo_rejected_response.jsonl",
        [
            {
                "messages": [system, user(ask(t)), assistant(f"It is {r}.")],
                # A string, or a list of assistant messages: both are ms-swift's layout.
                "rejected_response": f"It is {w}." if i % 2 else [assistant(f"It is {w}.")],
            }
            for i, (t, r, w) in enumerate(q)
        ],
    )
    write_jsonl(
        out / "dpo_rejected_messages.jsonl",
        [
            {
                "messages": [user(ask(t)), assistant(f"It is {r}.")],
                "rejected_messages": [user(ask(t)), assistant(f"It is {w}.")],
            }
            for t, r, w in q
        ],
    )
    write_jsonl(
        out / "kto_label.jsonl",
        [
            {
                "messages": [system, user(ask(t)), assistant(f"It is {r if i % 2 else w}.")],
                "label": bool(i % 2),
            }
            for i, (t, r, w) in enumerate(q)
        ],
    )
    write_jsonl(
        out / "grpo_prompts.jsonl",
        [{"messages": [system, user(ask(t))], "solution": f"It is {r}."} for t, r, _ in q],
    )
    write_jsonl(
        out / "agent_tool_call.jsonl",
        [
            {
                "tools": json.dumps(
                    [
                        {
                            "type": "function",
                            "function": {"name": "lookup_category", "parameters": {"type": "object"}},
                        }
                    ]
                ),
                "messages": [
                    user(ask(t)),
                    {
                        "role": "tool_call",
                        "content": json.dumps({"name": "lookup_category", "arguments": {"object": t}}),
                    },
                    {"role": "tool_response", "content": r},
                    assistant(f"It is {r}."),
                ],
            }
            for t, r, _ in q
        ],
    )
    # The older query/response layout, as CSV (ms-swift reads csv files too).
    with open(out / "query_response.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["system", "query", "response", "rejected_response"])
        for t, r, w in q:
            writer.writerow(["You sort objects into categories.", ask(t), f"It is {r}.", f"It is {w}."])


if __name__ == "__main__":
    trl()
    swift()
