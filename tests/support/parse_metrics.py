"""Parses a node's /metrics with the official Prometheus Python client's parser and
prints its samples as JSON: {"families": {name: type}, "samples": [[name, labels, value]]}.

    python parse_metrics.py URL [BEARER_KEY]

The parser raises on anything that is not valid text exposition format.
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

request = urllib.request.Request(sys.argv[1])
if len(sys.argv) > 2:
    request.add_header("Authorization", "Bearer " + sys.argv[2])
with urllib.request.urlopen(request) as response:
    content_type = response.headers.get("Content-Type", "")
    text = response.read().decode("utf-8")
families = {}
samples = []
for family in text_string_to_metric_families(text):
    if family.name in families:
        raise SystemExit(f"family {family.name} appears twice")
    families[family.name] = family.type
    for sample in family.samples:
        samples.append([sample.name, sample.labels, sample.value])
print(json.dumps({"content_type": content_type, "families": families, "samples": samples}))
