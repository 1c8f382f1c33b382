#!/bin/sh
# Long-running retraining scheduler for containers: supercronic runs `mrdib retrain` on a schedule.
#   RETRAIN_SCHEDULE  cron expression, default from deploy/crontab (02:00 every day, in TZ; UTC by default)
#   RETRAIN_ON_START  1 = also run one retraining right away (useful after a long outage) [0]
# `mrdib retrain` itself takes a lock, so a slow run and the next tick never overlap; its exit status
# (0 promoted / nothing to do, 3 gate failed, 2 bad input, 75 locked) shows up in supercronic's log.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
crontab="$here/crontab"
if [ -n "${RETRAIN_SCHEDULE:-}" ]; then
  crontab=$(mktemp "${TMPDIR:-/tmp}/mrdib-crontab.XXXXXX")
  printf '%s mrdib retrain\n' "$RETRAIN_SCHEDULE" > "$crontab"
fi
echo "retrain-cron: schedule: $(grep -v '^#' "$crontab" | grep -v '^$')" >&2
if [ "${RETRAIN_ON_START:-0}" = 1 ]; then
  mrdib retrain || echo "retrain-cron: start-up retraining exited with status $?" >&2
fi
exec supercronic -passthrough-logs "$crontab"
