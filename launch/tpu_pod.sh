#!/usr/bin/env bash
# Batch inversion on a Cloud TPU pod slice: the same command on every worker (--worker=all).
# jax.distributed auto-detects the pod (--distributed); each host reads only its shard of each
# chunk. WORKDIR must be shared by all workers (a gcsfuse or Filestore/NFS mount), because process
# 0 writes the manifest and every host writes its own reconstructions and tuned-parameter shards.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh /mnt/shared/ganinv_run \
#       --config.generator=/mnt/shared/ffhq_converted --config.data.path=/mnt/shared/faces \
#       --config.method=pti --config.batch_size=4
#
# Environment: TPU_NAME, ZONE (required); PROJECT (optional); REPO_DIR (checkout on the workers,
# default ~/ganinv_jax); SETUP=1 first clones/updates REPO_URL there and pip-installs it.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
if [[ $# -lt 1 ]]; then sed -n '2,14p' "$0"; exit 2; fi
WORKDIR=$1; shift
REPO_DIR=${REPO_DIR:-'~/ganinv_jax'}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
quoted=$(printf ' %q' "$@")

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="$1"
}
if [[ "${SETUP:-0}" == 1 ]]; then
  : "${REPO_URL:?set REPO_URL for SETUP=1}"
  ssh_all "set -e; if [ -d $REPO_DIR/.git ]; then git -C $REPO_DIR pull --ff-only; \
else git clone $REPO_URL $REPO_DIR; fi; pip install -q -e $REPO_DIR 'jax[tpu]'"
fi
ssh_all "set -e; cd $REPO_DIR && python -m ganinv_jax.main --config=configs/stylegan2.py \
--workdir=$WORKDIR --distributed$quoted 2>&1 | tee -a /tmp/ganinv_invert_\$(hostname).log"
