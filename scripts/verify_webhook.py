#!/usr/bin/env python3
"""Verifies one captured sluice webhook delivery with the `standardwebhooks` library.

Usage: verify_webhook.py CAPTURE.json, where the file holds {"secret", "headers", "body"}.
Exits 0 and prints the event type if the signature verifies, 1 otherwise.
"""
import json
import sys

from standardwebhooks.webhooks import Webhook

capture = json.load(open(sys.argv[1]))
try:
    event = Webhook(capture["secret"]).verify(capture["body"], capture["headers"])
except Exception as e:  # the library raises WebhookVerificationError
    print(f"not verified: {e}", file=sys.stderr)
    sys.exit(1)
print(event["type"])
