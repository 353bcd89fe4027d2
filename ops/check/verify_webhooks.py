#!/usr/bin/env python3
"""Verifies recorded webhook deliveries with the Standard Webhooks reference library.

Usage: verify_webhooks.py DELIVERIES.json

DELIVERIES.json is {"deliveries": [{"headers": {"webhook-id": ..., "webhook-timestamp":
..., "webhook-signature": ...}, "body": "<the body as sent>", "secrets": ["whsec_...",
...]}, ...]}, as tests/webhooks.rs records them from its receiver. Every delivery must
verify with every secret listed for it (after a rotation, a delivery carries one
signature per active secret), and must not verify once its body is altered. Prints one
line per failure and a summary; exits 1 on any failure, 2 on bad usage.
"""

import json
import sys
from importlib.metadata import version

from standardwebhooks.webhooks import Webhook


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        deliveries = json.load(f)["deliveries"]
    failures = 0
    checks = 0
    for delivery in deliveries:
        headers = delivery["headers"]
        body = delivery["body"]
        for secret in delivery["secrets"]:
            checks += 1
            hook = Webhook(secret)
            try:
                payload = hook.verify(body, headers)
            except Exception as err:  # noqa: BLE001 - a malformed header raises others
                failures += 1
                print(f"FAIL {headers.get('webhook-id')}: {err}")
                continue
            if payload != json.loads(body):
                failures += 1
                print(f"FAIL {headers.get('webhook-id')}: verify returned another payload")
            try:
                hook.verify(body + " ", headers)
            except Exception:  # noqa: BLE001
                pass
            else:
                failures += 1
                print(f"FAIL {headers.get('webhook-id')}: an altered body verified")
    print(
        f"standardwebhooks {version('standardwebhooks')}: {len(deliveries)} deliveries, "
        f"{checks} signatures checked, {failures} failed"
    )
    return 1 if failures or not deliveries else 0


if __name__ == "__main__":
    sys.exit(main())
