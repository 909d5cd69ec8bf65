#!/usr/bin/env python3
"""Checks a shardswarm HTTP API with the official `openai` Python client (PyPI `openai`).

Usage: openai_client_check.py BASE_URL        e.g. openai_client_check.py http://127.0.0.1:7448

The client talks to BASE_URL/v1 with the API key from $SHARDSWARM_API_KEY (or "none"). It lists
the models, streams a chat completion (at least one content delta and a finish_reason), and runs
a non-streamed completion with temperature 0 and max_tokens 8 (usage.completion_tokens >= 1).
Prints a one-line summary and exits 0, or names the failed check on stderr and exits 1
(2 for bad usage or a missing `openai` package).
"""

import os
import sys
import time


class CheckFailed(Exception):
    """One of the checks did not hold."""


def check(cond, message):
    if not cond:
        raise CheckFailed(message)


def run(base_url):
    from openai import OpenAI

    client = OpenAI(
        base_url=base_url.rstrip("/") + "/v1",
        api_key=os.environ.get("SHARDSWARM_API_KEY") or "none",
        timeout=300.0,
        max_retries=0,
    )

    models = client.models.list()
    ids = [m.id for m in models.data]
    check(len(ids) >= 1, "GET /v1/models listed no model")
    model = ids[0]

    started = time.monotonic()
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello in one short sentence."}],
        max_tokens=32,
        stream=True,
    )
    deltas, finish, chat_text = 0, None, []
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta is not None and choice.delta.content:
                deltas += 1
                chat_text.append(choice.delta.content)
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    chat_s = time.monotonic() - started
    check(deltas >= 1, "the streamed chat completion sent no content delta")
    check(finish is not None, "the streamed chat completion sent no finish_reason")

    completion = client.completions.create(
        model=model, prompt="The capital of France is", temperature=0, max_tokens=8
    )
    check(completion.usage is not None, "the completion has no usage")
    check(
        completion.usage.completion_tokens >= 1,
        f"usage.completion_tokens is {completion.usage.completion_tokens}, expected >= 1",
    )
    check(len(completion.choices) == 1, f"expected 1 choice, got {len(completion.choices)}")

    print(
        f"ok: model {model!r}; chat stream: {deltas} deltas, finish_reason {finish!r} "
        f"in {chat_s:.1f} s ({''.join(chat_text)!r}); completion: "
        f"{completion.usage.completion_tokens} tokens {completion.choices[0].text!r}"
    )


def main():
    if len(sys.argv) != 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        import openai  # noqa: F401
    except ImportError:
        print("error: the `openai` package is missing: pip install openai", file=sys.stderr)
        return 2
    from openai import APIError, APIConnectionError, APIStatusError

    base_url = sys.argv[1]
    try:
        run(base_url)
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except APIStatusError as e:
        print(f"FAILED: HTTP {e.status_code} from {base_url}: {e.message}", file=sys.stderr)
        return 1
    except APIConnectionError as e:
        print(f"FAILED: cannot reach {base_url}: {e}", file=sys.stderr)
        return 1
    except APIError as e:
        print(f"FAILED: API error from {base_url}: {e.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
