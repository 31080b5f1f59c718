"""Drives a live sluice with the official OpenAI Python SDK, changing only base_url and api_key.

Run by tests/openai_sdk.rs with SLUICE_BASE_URL (".../v1") and SLUICE_API_KEY set. Exits non-zero
(an assertion or an SDK error) on the first thing that is not as OpenAI's API would answer.
"""

import http.server
import io
import json
import os
import sys
import threading
import time

from openai import OpenAI

client = OpenAI(base_url=os.environ["SLUICE_BASE_URL"], api_key=os.environ["SLUICE_API_KEY"], max_retries=0)
DEADLINE = time.monotonic() + 120


def line(custom_id, prompt):
    return json.dumps({
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "summarize", "messages": [{"role": "user", "content": prompt}], "max_tokens": 32},
    })


def wait_batch(batch_id, done):
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in done:
            return batch
        assert time.monotonic() < DEADLINE, f"batch {batch_id} stuck in {batch.status}"
        time.sleep(0.2)


# Webhooks: a local receiver, and an endpoint subscribed to batch.completed.
received = []


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        received.append((body, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=receiver.serve_forever, daemon=True).start()
endpoint = client.webhooks.create(
    url=f"http://127.0.0.1:{receiver.server_address[1]}/hooks",
    event_types=["batch.completed"],
    name="sdk receiver",
)
assert endpoint.signing_secret.startswith("whsec_"), endpoint
assert endpoint.id in [e.id for e in client.webhooks.list()], "listed"
secret = endpoint.signing_secret

# Files: upload a batch input with one request the upstream refuses (HTTP 400).
jsonl = "\n".join([
    line("ok-1", "first request to summarise"),
    line("bad-upstream", "this one fails [[mock:status=400]]"),
    line("ok-2", "second request to summarise"),
]) + "\n"
uploaded = client.files.create(file=("input.jsonl", io.BytesIO(jsonl.encode())), purpose="batch")
assert uploaded.id.startswith("file-") and uploaded.object == "file", uploaded
assert uploaded.purpose == "batch" and uploaded.bytes == len(jsonl.encode()), uploaded
assert client.files.retrieve(uploaded.id).filename == "input.jsonl"
assert client.files.content(uploaded.id).read() == jsonl.encode()

# Batches: a 1h window runs real-time; poll until it completes.
batch = client.batches.create(
    input_file_id=uploaded.id,
    endpoint="/v1/chat/completions",
    completion_window="1h",
    metadata={"suite": "sdk"},
)
assert batch.object == "batch" and batch.status == "validating", batch
assert batch.metadata == {"suite": "sdk"}, batch.metadata
batch = wait_batch(batch.id, {"completed", "failed", "expired", "cancelled"})
assert batch.status == "completed", batch
assert batch.request_counts.total == 3, batch.request_counts
assert batch.request_counts.completed == 2 and batch.request_counts.failed == 1, batch.request_counts
for stamp in ("in_progress_at", "finalizing_at", "completed_at", "expires_at"):
    assert getattr(batch, stamp), f"{stamp} missing: {batch}"

# Output and error files in OpenAI's output line format.
output = [json.loads(l) for l in client.files.content(batch.output_file_id).text.splitlines()]
assert sorted(o["custom_id"] for o in output) == ["ok-1", "ok-2"], output
for o in output:
    assert o["error"] is None and o["response"]["status_code"] == 200, o
    assert o["response"]["body"]["object"] == "chat.completion", o
errors = [json.loads(l) for l in client.files.content(batch.error_file_id).text.splitlines()]
assert [e["custom_id"] for e in errors] == ["bad-upstream"], errors
assert errors[0]["response"]["status_code"] == 400, errors
assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"

# Pagination: two more batches, then walk them one per page.
ids = {batch.id}
for _ in range(2):
    ids.add(client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="1h").id)
page = client.batches.list(limit=1)
assert len(page.data) == 1 and page.has_more, page
seen = [b.id for b in client.batches.list(limit=1)]  # auto-pagination follows has_more/after
assert ids <= set(seen), (ids, seen)
assert len(seen) == len(set(seen)), seen
assert seen == sorted(seen, reverse=True), seen

# Cancel: a 24h window goes to the provider batch path; cancel it.
other = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                              completion_window="24h")
cancelled = client.batches.cancel(other.id)
assert cancelled.status == "cancelling", cancelled
cancelled = wait_batch(other.id, {"cancelled", "completed", "failed"})
assert cancelled.status == "cancelled" and cancelled.cancelled_at, cancelled

# Chat completions, whole and streamed with usage.
chat = client.chat.completions.create(model="summarize", messages=[{"role": "user", "content": "hello there"}],
                                      max_tokens=32)
assert chat.object == "chat.completion" and chat.choices[0].message.content, chat
assert chat.usage.total_tokens > 0, chat.usage
stream = client.chat.completions.create(model="summarize", messages=[{"role": "user", "content": "stream this"}],
                                        max_tokens=32, stream=True, stream_options={"include_usage": True})
text, usage, chunks = "", None, 0
for chunk in stream:
    chunks += 1
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert chunks >= 3 and text, (chunks, text)
assert usage is not None and usage.total_tokens > 0, usage

# Delete.
assert client.files.delete(uploaded.id).deleted
# The batch's batch.completed event reached the receiver, and the SDK verifies and parses it.
while not any(json.loads(b).get("data", {}).get("id") == batch.id for b, _ in received):
    assert time.monotonic() < DEADLINE, f"no batch.completed for {batch.id}; got {len(received)} deliveries"
    time.sleep(0.2)
body, headers = next((b, h) for b, h in received if json.loads(b)["data"]["id"] == batch.id)
event = client.webhooks.unwrap(body.decode(), headers, secret=secret)
assert event.type == "batch.completed" and event.data.id == batch.id, event
try:
    client.webhooks.unwrap(body.decode(), headers, secret="whsec_" + "A" * 32)
    raise AssertionError("a wrong secret must not verify")
except AssertionError:
    raise
except Exception:
    pass

# Rotating the secret returns a new one, shown once.
rotated = client.webhooks.rotate_secret(endpoint.id)
assert rotated.signing_secret.startswith("whsec_") and rotated.signing_secret != secret, rotated
assert client.webhooks.retrieve(endpoint.id).id == endpoint.id
receiver.shutdown()

print("openai sdk: all checks passed")
sys.exit(0)
