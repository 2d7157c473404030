"""Renders shardmerge's built-in chat templates and mergekit 0.1.5's templates of the same
names with transformers' own chat-template renderer, over many conversation shapes, and
reports every rendering that differs (exit 1) or none (exit 0).

    $MERGEKIT_VENV/bin/python tests/golden/check_chat_templates.py

mergekit's templates are read from the installed package; nothing of them is copied here.
The golden suite (tests/tests/golden.rs) checks the same with minijinja; this script checks
against the renderer transformers users actually run (jinja2).
"""

import importlib.resources
import itertools
import pathlib
import sys

from mergekit._data import chat_templates
from transformers.utils.chat_template_utils import render_jinja_template

OURS = pathlib.Path(__file__).resolve().parents[2] / "coordinator/src/plan/chat_templates"
NAMES = ["alpaca", "chatml", "exaone", "llama3", "mistral"]


def msg(role, content):
    return {"role": role, "content": content}


S = msg("system", "  Be brief.\n")
S2 = msg("system", "second system")
U1 = msg("user", " Hello there \n")
U2 = msg("user", "Two\nlines")
A1 = msg("assistant", "Hi! ")
A2 = msg("assistant", "ok")
C = msg("user_context", " ctx ")
T = msg("tool", "42")
CONVERSATIONS = [
    [S, U1], [U1], [U1, A1, U2], [U1, A1, U2, A2], [S, U1, A1, U2], [S, U1, A1], [A1], [S],
    [U1, C], [C, U1, A1], [U1, T, A1], [S, U1, S2], [U1, S2], [S, S2, U1], [U1, U2], [S, A1],
    [T], [U1, A1, T],
]


def render(template, conversation, add_generation_prompt):
    try:
        out = render_jinja_template(
            [conversation], chat_template=template, add_generation_prompt=add_generation_prompt,
            bos_token="<s>", eos_token="</s>",
        )
        return ("ok", out[0][0])
    except Exception as e:  # a template may refuse a shape; then both must
        return ("error", type(e).__name__)


def main():
    differ = total = 0
    for name in NAMES:
        theirs = importlib.resources.files(chat_templates).joinpath(name + ".jinja").read_text()
        ours = (OURS / (name + ".jinja")).read_text()
        for conversation, gen in itertools.product(CONVERSATIONS, [False, True]):
            total += 1
            a, b = render(theirs, conversation, gen), render(ours, conversation, gen)
            if a != b:
                differ += 1
                roles = [m["role"] for m in conversation]
                print(f"{name} {roles} add_generation_prompt={gen}: mergekit {a!r}, shardmerge {b!r}")
    print(f"{total} renderings, {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
