#!/usr/bin/env python3
"""Writes N realistic support-ticket summarization requests in OpenAI batch input format.

Usage: scripts/gen-tickets.py [N] > examples/tickets.jsonl   (deterministic: seeded)
"""
import json
import random
import sys

n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
rng = random.Random(42)
products = ["billing portal", "mobile app", "CSV export", "SSO login", "webhook delivery", "invoice PDF",
            "search page", "team invites", "API rate limits", "dashboard charts", "password reset", "data import"]
symptoms = ["returns a 500 error", "is extremely slow since yesterday", "shows the wrong currency",
            "logs me out every few minutes", "drops the last row", "never arrives", "times out on large files",
            "shows another customer's name", "fails silently", "duplicates every entry"]
moods = ["This is blocking our month-end close.", "Not urgent, but annoying.", "Our CEO noticed, please hurry.",
         "We are evaluating alternatives if this continues.", "Thanks for the great product otherwise!"]
tiers = ["free", "pro", "enterprise"]
for i in range(1, n + 1):
    product, symptom = rng.choice(products), rng.choice(symptoms)
    steps = rng.randint(1, 4)
    body = (f"Hi team, since the last release the {product} {symptom}. "
            + " ".join(f"Step {s}: I tried {rng.choice(['clearing the cache', 'another browser', 'a different account', 'the API directly', 'waiting an hour'])}."
                       for s in range(1, steps + 1))
            + f" Account #{rng.randint(10000, 99999)}. {rng.choice(moods)}")
    line = {
        "custom_id": f"ticket-{i:05d}",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Summarize the support ticket in one sentence and label its urgency (low, medium, high)."},
                {"role": "user", "content": body},
            ],
            "max_tokens": 120,
            "temperature": 0,
        },
    }
    if i % 10 == 0:
        line["tags"] = {"feature": "ticket-summary", "tier": rng.choice(tiers)}
    print(json.dumps(line))
