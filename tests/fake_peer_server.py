"""A stand-in for benchmarks/peer/peer_server.py in tests: the same JSON-lines protocol, no model, answers in
microseconds. Run as `python fake_peer_server.py NAME [-u SERVER]` (a wrapper script plays a peer Python named
NAME); asked `-c CODE MODULES...` (the harness's check of which peer libraries it lacks), it lacks none. Asked to
load with model_file, it names the model.onnx in the peer's model folder (a test's tiny ONNX) as the model it made."""

import json
import sys
import time
from pathlib import Path

NAME = sys.argv[1]


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[2] == "-c":  # benchmarks/harness/peers.py MISSING_MODULES: none missing
        print(json.dumps([]))
        return
    texts: list[str] = []
    loaded: dict[str, dict] = {}
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        if op == "quit":
            break
        if op == "versions":
            answer = {"versions": {"env": NAME}}
        elif op == "texts":
            texts = req["texts"]
            answer = {"n": len(texts)}
        elif op == "load":
            loaded[req["label"]] = req
            calib = req.get("calib_texts")
            answer = {"info": {"runtime": f"fake pipeline in {NAME}", "backend": f"fake {req['kind']}",
                               "model": req["model"], "calib_texts": len(calib) if calib else 0,
                               "versions": {"env": NAME}}}
            made = Path(req["model"]) / "model.onnx"  # the "made" model: the ONNX file in the peer's model folder
            if req.get("model_file") and made.is_file():
                answer["info"] |= {"model_path": str(made), "model_format": "onnx"}
        elif op == "run":
            # the label follows the adjective, as in tests/conftest.py sentiment_rows
            pos = ("good", "great", "fun", "beautiful")
            time.sleep(0.002)  # a pass the report can time (it rounds wall times to milliseconds)
            labels = ["positive" if any(w in t.split() for w in pos) else "negative" for t in texts]
            answer = {"labels": labels, "batch_ms": [0.5] * max(1, len(texts) // 16)}
        else:
            answer = {"ok": False, "error": f"unknown op {op!r}"}
        sys.stdout.write(json.dumps({"ok": True} | answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
