"""A chat-completions endpoint on loopback for the enhance stage's tests: it answers like an LLM
that follows paddock's system prompt, or (for a draft that asks for it) breaks the form."""

from __future__ import annotations

import json
import re
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FILLER = ("The camera holds a static medium close-up at eye level with soft window light from the left and a "
          "shallow depth of field that keeps the face sharp while the kitchen behind stays still. ")


def good_answer(user: str) -> str:
    rows = re.findall(r'^\d+\. (.+?) \((\w+)\): (".*")$', user, flags=re.M)
    body = "A woman in a linen shirt sits still at a kitchen counter, calm and warm in her disposition. " + FILLER * 3
    for speaker, _, quoted in rows:
        body += f"{speaker} lifts her brows slightly and says, {quoted} in a warm, even, mid-pitched, soft voice. "
    body += FILLER * 2
    sound = re.search(r"^Background sound: (.*)$", user, flags=re.M).group(1)
    parts = [body.strip()]
    if rows:
        parts.append("Dialogue:\n" + "\n".join(f"<Woman in linen shirt, {lang}>: {q}" for _, lang, q in rows))
    parts.append(f"Background Sound:\n<{'No prominent background sound' if sound == 'none' else sound}>")
    return "\n\n".join(parts)


class ChatServer:
    """``calls`` counts the completions asked for; ``fail_next`` answers that many with 503 first."""

    def __init__(self):
        self.calls = 0
        self.fail_next = 0
        self.bodies: list[dict] = []
        self.lock = threading.Lock()

    def answer(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.calls += 1
            self.bodies.append(body)
            if self.fail_next:
                self.fail_next -= 1
                return 503, {"error": {"message": "overloaded"}}
        user = body["messages"][-1]["content"]
        text = "Sure! Here is a nice prompt." if "MALFORMED" in user else good_answer(user)
        return 200, {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}]}


@contextmanager
def chat_server():
    """(server state, base URL) of a chat-completions endpoint on 127.0.0.1."""
    state = ChatServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            if self.path != "/v1/chat/completions":
                self.send_error(404)
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            status, payload = state.answer(body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
