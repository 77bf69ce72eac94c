#!/bin/sh
# Slurm Prolog (slurm.conf: Prolog=/etc/slurm/prolog.d/xnatfs.sh, PrologFlags=Alloc):
# mount XNAT at $XNATFS_MOUNT_ROOT/$SLURM_JOB_USER for this user's jobs on this node.
# Never fails: a non-zero Prolog drains the node, and a job without its mount fails on its own
# with a clear "No such file or directory" in its own output.
/usr/bin/python3 /usr/local/libexec/xnatfs_slurm.py start "$SLURM_JOB_ID" "$SLURM_JOB_USER" \
    >/dev/null 2>&1 || logger -t xnatfs-slurm "prolog: mount for $SLURM_JOB_USER (job $SLURM_JOB_ID) failed"
exit 0
