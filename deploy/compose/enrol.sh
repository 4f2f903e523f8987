#!/bin/bash
# The Compose trial's one-shot enrolment (service `pki`): creates the federation's CA and
# enrols every party, each into its own volume, which only that party's container mounts:
#   /pki/ca            the CA (key and index; mounted by this step only)
#   /pki/coordinator   the coordinator (certificate for the host names coordinator, localhost,
#                      127.0.0.1)
#   /pki/lead          the research lead
#   /pki/<site>        each site
# Idempotent: an existing CA or an enrolled party is left as it is, so `docker compose up` can
# be run again. In a real federation each party runs `coordinator pki request` on its own
# machine and sends only the CSR to the CA's operator (README, "Run it as a real federation").
#
# It starts as root only to hand the fresh, root-owned volumes to the image's user (uid 10001)
# and then drops to that user (setpriv) before any key is made.
set -euo pipefail
sites=(cleveland hungarian switzerland va)
if [ "$(id -u)" = 0 ]; then
  for d in /pki/*/; do
    if [ "$(stat -c %u "$d")" = 0 ]; then   # a fresh volume
      chmod 0700 "$d"
      chown 10001:10001 "$d"
    fi
  done
  exec setpriv --reuid=10001 --regid=10001 --clear-groups "$0" "$@"
fi
umask 077
if [ -f /pki/ca/ca.pem ]; then
  echo "CA: already created"
else
  coordinator pki init --ca /pki/ca --federation "${FEDCARE_FEDERATION:-fedcare-compose-trial}"
fi
enrol() { # role name [--host H ...]
  local role=$1 name=$2; shift 2
  if [ -f "/pki/$name/$name.pem" ]; then
    echo "$role $name: already enrolled"
    return
  fi
  coordinator pki request --dir "/pki/$name" --name "$name" > /dev/null
  coordinator pki sign --ca /pki/ca --csr "/pki/$name/$name.csr" --role "$role" --name "$name" "$@"
}
enrol coordinator coordinator --host coordinator --host localhost --host 127.0.0.1
enrol research-lead lead
for s in "${sites[@]}"; do enrol site "$s"; done
