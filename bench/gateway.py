"""The OpenAI-compatible gateway measured on the real stack, side by side in one run.

One devnet (coordinator, three node processes serving a small seeded GPT-2 with the MiniLM
tokenizer, int8 shards on IPFS) and one `shardnet gateway` process. In turns, the same greedy
generation (a short prompt, 8 new tokens) is run:
- as an app does: `openai.OpenAI(base_url=gateway).completions.create(...)`;
- as a client at the command line does: `shardnet job submit --prompt ... --max-new-tokens 8`
  (a process that posts the job and waits for its on-chain result);
- streamed: `chat.completions.create(..., stream=True)`, timing the first content chunk.
Prints `name: value` lines:

- ttft_ms_p50: a streamed chat request's time to its first token (job posted, routed, first token
  made by the last stage and streamed through the gateway)
- gateway_ms_p50, cli_ms_p50: a completion's wall time through each
- gateway_overhead_ratio: gateway_ms_p50 / cli_ms_p50 (target <= 1.2)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import openai

from shardnet.localnet import Network

ROUNDS = 8
PROMPT = "the quick brown fox"
NEW_TOKENS = 8


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    net = Network(home / "net").start()
    try:
        model_id, _ = net.publish("demo-gpt2")
        net.wait_confirmed(model_id, 3)
        keys = home / "keys.json"
        keys.write_text(json.dumps({"keys": {"sk-bench": {"budget_wei": 10**19}}}))
        api = openai.OpenAI(base_url=net.start_gateway(keys), api_key="sk-bench", max_retries=0, timeout=300)
        cli = [sys.executable, "-m", "shardnet.cli", "job", "submit", "--model", str(model_id), "--prompt", PROMPT]
        cli += ["--max-new-tokens", str(NEW_TOKENS), "--json"]
        env = {"SHARDNET_DEPLOYMENT": str(net.deployment_path), "PATH": "/usr/bin:/bin"}
        api.completions.create(model="demo-gpt2", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)  # warm up
        gateway_ms, cli_ms, ttft_ms = [], [], []
        for _ in range(ROUNDS):
            t0 = time.perf_counter()
            done = api.completions.create(model="demo-gpt2", prompt=PROMPT, max_tokens=NEW_TOKENS, temperature=0)
            gateway_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            out = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=300)
            cli_ms.append((time.perf_counter() - t0) * 1000)
            if out.returncode != 0:
                raise SystemExit(f"job submit failed: {out.stderr[-2000:]}")
            assert json.loads(out.stdout)["output"]["text"] == done.choices[0].text  # the same job, both ways
            t0 = time.perf_counter()
            stream = api.chat.completions.create(
                model="demo-gpt2",
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=NEW_TOKENS,
                temperature=0,
                stream=True,
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    ttft_ms.append((time.perf_counter() - t0) * 1000)
                    break
            for _ in stream:
                pass
        gw, cl = statistics.median(gateway_ms), statistics.median(cli_ms)
        print(f"rounds: {ROUNDS}")
        print(f"ttft_ms_p50: {statistics.median(ttft_ms):.1f}")
        print(f"gateway_ms_p50: {gw:.1f}")
        print(f"cli_ms_p50: {cl:.1f}")
        print(f"gateway_overhead_ratio: {gw / cl:.3f}")
    finally:
        net.stop()


if __name__ == "__main__":
    main()
