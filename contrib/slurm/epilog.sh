#!/bin/sh
# Slurm Epilog (slurm.conf: Epilog=/etc/slurm/epilog.d/xnatfs.sh): forget this job; the
# user's last job on this node unmounts. Never fails (a failing Epilog drains the node).
/usr/bin/python3 /usr/local/libexec/xnatfs_slurm.py stop "$SLURM_JOB_ID" "$SLURM_JOB_USER" \
    >/dev/null 2>&1 || logger -t xnatfs-slurm "epilog: job $SLURM_JOB_ID of $SLURM_JOB_USER: cleanup failed"
exit 0
