#!/usr/bin/env python3
"""Time to first token of a conversation's first and second turn, through an
OpenAI-compatible server (an exo node or llama-server): the second turn repeats the first
turn's ~1,000-token history, which a prefix cache answers without prefilling it again.

    scripts/second-turn-bench.py URL MODEL [ROUNDS]

Each round is a new conversation (so the first turn never hits a cache); greedy, streamed,
16 tokens per answer. Prints each round and the medians as JSON on the last line.
"""
import json
import statistics
import sys
import time
import urllib.request

FACTS = [
    "The river {k} runs {n} kilometres through the valley of {k}ia.",
    "In the year {n}, the town of {k}burg built a bridge of stone.",
    "The {k} orchestra plays {n} concerts every season.",
    "A {k} tree grows {n} centimetres in a good summer.",
]


def history(round_no):
    """About 1,000 tokens of facts, different in every round."""
    key = f"Zor{round_no}x"
    lines = [FACTS[i % len(FACTS)].format(k=key, n=100 + 7 * i + round_no) for i in range(60)]
    return [
        {"role": "system", "content": "You answer questions about the notes below.\n" + "\n".join(lines)},
        {"role": "user", "content": f"How long is the river {key}?"},
    ]


def ttft(url, model, messages):
    """Seconds to the first streamed content, and the whole answer's text."""
    body = json.dumps({"model": model, "messages": messages, "stream": True,
                       "temperature": 0, "max_tokens": 16}).encode()
    request = urllib.request.Request(url + "/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    first, text = None, ""
    with urllib.request.urlopen(request, timeout=600) as response:
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter() - started
                    text += piece
    return first, text


def main():
    url, model = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    firsts, seconds = [], []
    for r in range(rounds):
        messages = history(r)
        first, answer = ttft(url, model, messages)
        messages += [{"role": "assistant", "content": answer},
                     {"role": "user", "content": "And in which year was the bridge built?"}]
        second, _ = ttft(url, model, messages)
        firsts.append(first)
        seconds.append(second)
        print(f"round {r}: first turn {first:.3f} s, second turn {second:.3f} s", file=sys.stderr)
    first, second = statistics.median(firsts), statistics.median(seconds)
    print(json.dumps({"url": url, "first_turn_ttft_s": round(first, 4),
                      "second_turn_ttft_s": round(second, 4), "ratio": round(second / first, 3)}))


if __name__ == "__main__":
    main()
