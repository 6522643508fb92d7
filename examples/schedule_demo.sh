#!/bin/sh
# Deployed workflows and schedules in about 40 seconds, on the embedded dev servers:
# deploy examples/nightly_report.yaml, schedule it every 10 s, watch three ticks start one run each,
# then schedule it for real (02:00 Berlin time) and clean up. Run from the repository root.
set -eu
steppe() { .venv/bin/steppe "$@"; }
steppe dev up
steppe db upgrade
steppe coordinator >/tmp/steppe-demo-coordinator.log 2>&1 &
coordinator=$!
steppe worker >/tmp/steppe-demo-worker.log 2>&1 &
worker=$!
trap 'kill "$coordinator" "$worker" 2>/dev/null || true' EXIT

steppe workflows deploy examples/nightly_report.yaml
steppe schedules add demo --workflow nightly-report --every 10s --input region=demo
steppe schedules list
echo "waiting for three ticks (about 30 s) ..."
fired() { steppe schedules show demo --json | .venv/bin/python -c 'import json, sys; print(json.load(sys.stdin)["fired"])'; }
until [ "$(fired)" -ge 3 ]; do sleep 1; done
steppe schedules show demo
steppe runs --workflow nightly-report
steppe schedules remove demo

steppe schedules add nightly-report --workflow nightly-report@1 --cron "0 2 * * *" --timezone Europe/Berlin
steppe schedules list
steppe schedules remove nightly-report
# The dev servers keep running: `steppe dev down` stops them.
