#!/bin/sh
# Entry point of the "mount" service in docker/compose.yaml: mount $XNAT_URL at $MOUNTPOINT in the
# foreground (so `docker compose logs mount` shows xnatfs's log), list it once it answers, and
# unmount cleanly when the container is stopped.
set -eu
: "${XNAT_URL:?set XNAT_URL}" "${MOUNTPOINT:=/mnt/xnat}"

xnatfs mount "$XNAT_URL" "$MOUNTPOINT" --foreground "$@" &
pid=$!
trap 'xnatfs umount "$MOUNTPOINT" || xnatfs umount --lazy "$MOUNTPOINT"' TERM INT

# wait (at most 60 s) until the mount answers, or fail if xnatfs exited
i=0
until mountpoint -q "$MOUNTPOINT"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        wait "$pid" || true
        echo "demo-mount: xnatfs exited before $MOUNTPOINT was mounted" >&2
        exit 1
    fi
    i=$((i + 1))
    if [ "$i" -gt 120 ]; then
        echo "demo-mount: $MOUNTPOINT not mounted after 60 s" >&2
        kill "$pid"
        exit 1
    fi
    sleep 0.5
done

echo "demo-mount: $XNAT_URL is mounted at $MOUNTPOINT"
ls -l "$MOUNTPOINT"
ls -l "$MOUNTPOINT"/DEMO1/subjects || true
echo "demo-mount: try  docker compose -f docker/compose.yaml exec mount ls -R $MOUNTPOINT/DEMO1"

# xnatfs runs until the trap unmounts it (docker compose stop/down); `wait` returns early when a
# trapped signal arrives, so wait again for xnatfs's own exit status
status=0
wait "$pid" || status=$?
while kill -0 "$pid" 2>/dev/null; do
    status=0
    wait "$pid" || status=$?
done
exit "$status"
