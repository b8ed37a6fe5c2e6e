"""`peftkit serve` with the real `openai` client: completions and chat completions, streamed or not,
64 concurrent requests over 8 adapters each equal to the same request run alone, and bad requests."""

import copy
import json
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from tests.cli.conftest import FACTS, build_model, build_tokenizer

import peftkit
from peftkit.cli import build_parser
from peftkit.cli.serve import build_app
from peftkit.serving.http_server import make_server, serve_in_thread

ADAPTERS = 8
WORDS = sorted({w for q, a in FACTS for w in f"{q} {a}".split()})


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    tokenizer = build_tokenizer()
    base = build_model(len(tokenizer))
    base.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for i in range(ADAPTERS):
        torch.manual_seed(i)
        config = peftkit.LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        peftkit.get_peft_model(copy.deepcopy(base), config).save_pretrained(root / "adapters" / f"ad{i}")
    args = build_parser().parse_args(
        ["serve", "--model", str(root / "model"), "--adapters-dir", str(root / "adapters"), "--max-resident", "6",
         "--max-batch", "24", "--max-context", "64", "--port", "0"]
    )  # fmt: skip
    app = build_app(args)
    http = make_server(app, "127.0.0.1", 0)
    app.engine.start()
    serve_in_thread(http)
    port = http.server_address[1]
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120
    )
    yield client, app, port
    http.shutdown()
    http.server_close()
    app.engine.stop()


def _prompt(rng):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(2, 7)))


def test_models_completions_and_chat_streamed_or_not(server):
    client, _, _ = server
    ids = {m.id for m in client.models.list()}
    assert {"base", *(f"ad{i}" for i in range(ADAPTERS))} <= ids
    whole = client.completions.create(
        model="ad1", prompt="what color is the sky ?", max_tokens=6, temperature=0
    )
    assert whole.object == "text_completion" and whole.usage.completion_tokens >= 1
    streamed = client.completions.create(
        model="ad1", prompt="what color is the sky ?", max_tokens=6, temperature=0, stream=True
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    messages = [{"role": "user", "content": "what color is the sea ?"}]
    chat = client.chat.completions.create(model="ad2", messages=messages, max_tokens=5, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    pieces = client.chat.completions.create(
        model="ad2", messages=messages, max_tokens=5, temperature=0, stream=True
    )
    text = "".join(p.choices[0].delta.content or "" for p in pieces)
    assert text == chat.choices[0].message.content
    base = client.chat.completions.create(model="base", messages=messages, max_tokens=5, temperature=0)
    assert base.choices[0].message.content != chat.choices[0].message.content or base.usage.completion_tokens


def _ask(client, request):
    kind, model, prompt, max_tokens, settings = request
    if kind == "chat":
        out = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, **settings
        )
        return out.choices[0].message.content, out.usage.completion_tokens
    out = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, **settings)
    return out.choices[0].text, out.usage.completion_tokens


def test_64_concurrent_requests_over_8_adapters_equal_each_request_alone(server):
    client, app, _ = server
    rng = random.Random(0)
    requests = []
    for i in range(64):
        settings = {"temperature": 0} if i % 4 else {"temperature": 0.9, "top_p": 0.9, "seed": i}
        kind = "chat" if i % 2 else "completion"
        requests.append(
            (kind, f"ad{i % ADAPTERS}" if i % 9 else "base", _prompt(rng), rng.randrange(1, 9), settings)
        )
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=64) as pool:
        together = list(pool.map(lambda r: _ask(client, r), requests))
    together_s = time.perf_counter() - start
    assert app.engine.largest_batch > 8  # requests for different adapters shared decoding steps
    start = time.perf_counter()
    alone = [None] * len(requests)
    for i in sorted(range(len(requests)), key=lambda i: requests[i][1]):  # by adapter: fewer reloads
        alone[i] = _ask(client, requests[i])
    alone_s = time.perf_counter() - start
    assert together == alone
    tokens = sum(count for _, count in together)
    print(
        f"\n{tokens} tokens: {tokens / together_s:.0f} tokens/s concurrently, {tokens / alone_s:.0f} one at a time"
    )


def _post(port, path, body: bytes):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bad_requests_get_an_http_error_with_a_message_and_the_server_keeps_serving(server):
    client, _, port = server
    with pytest.raises(openai.NotFoundError, match="The model 'nope' does not exist"):
        client.completions.create(model="nope", prompt="the sky", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="more than this server's context of 64"):
        client.completions.create(model="ad0", prompt="the sky " * 40, max_tokens=8)
    with pytest.raises(openai.BadRequestError, match="Only 'n': 1 is supported"):
        client.completions.create(model="ad0", prompt="the sky", max_tokens=2, n=2)
    with pytest.raises(openai.BadRequestError, match="Unsupported field.*logprobs"):
        client.completions.create(model="ad0", prompt="the sky", max_tokens=2, logprobs=2)
    status, body = _post(port, "/v1/chat/completions", b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = _post(port, "/v1/chat/completions", json.dumps({"model": "ad0", "messages": []}).encode())
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = _post(port, "/v1/nothing", b"{}")
    assert status == 404 and "No route" in body["error"]["message"]
    answer = client.completions.create(
        model="ad3", prompt="what color is the sun ?", max_tokens=3, temperature=0
    )
    assert answer.usage.completion_tokens >= 1  # still serving


def test_many_clients_connecting_at_once_are_queued_not_refused(server):
    """The kernel queues connections the server has not accepted yet (a decoding step can hold the
    accepting thread back); with socketserver's backlog of 5, the 7th client at once waited or got reset."""
    import socket

    _, app, _ = server
    idle = make_server(app, "127.0.0.1", 0)  # listening, never accepting: the worst case
    clients = []
    try:
        for _ in range(64):
            clients.append(socket.create_connection(idle.server_address, timeout=3))
    finally:
        for client in clients:
            client.close()
        idle.server_close()
    assert len(clients) == 64
