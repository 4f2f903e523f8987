#!/usr/bin/env bash
# The heart-disease federation as separate processes, the way hospitals would run it, on one
# machine: a federation CA, every party enrolled by certificate signing request, a coordinator
# serving mutual TLS, four site agents (each with only its own data, ledger and TLS folder),
# and a research lead submitting the job and fetching the model and report.
#
#   examples/heart-disease/run-federation.sh [WORKDIR]     (default: out/federation)
#
# Uses the debug binaries (built first). Everything it writes goes to WORKDIR; the processes
# it starts are stopped when it ends.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-out/federation}
mkdir -p "$work" && work=$(cd "$work" && pwd)
cargo build -q -p coordinator -p site-agent --manifest-path "$root/Cargo.toml"
C="$root/target/debug/coordinator"
A="$root/target/debug/site-agent"
sites=(cleveland hungarian switzerland va)
port=${FEDCARE_PORT:-50051}
url="https://127.0.0.1:$port"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== the federation's CA and enrolment ($work/pki)"
rm -rf "$work/pki" "$work/state"
"$C" pki init --ca "$work/pki/ca" --federation heart-disease-demo
enrol() { # role name [--host H ...]
  local role=$1 name=$2; shift 2
  "$C" pki request --dir "$work/pki/$name" --name "$name" > /dev/null   # on the party's machine
  "$C" pki sign --ca "$work/pki/ca" --csr "$work/pki/$name/$name.csr" --role "$role" --name "$name" "$@"
}
enrol coordinator coordinator --host 127.0.0.1 --host localhost
enrol research-lead lead
for s in "${sites[@]}"; do enrol site "$s"; done

echo "== coordinator on $url (mutual TLS)"
mkdir -p "$work/state"
"$C" serve --listen "127.0.0.1:$port" --tls "$work/pki/coordinator" --state "$work/state/coordinator.redb" \
  2> "$work/coordinator.log" &
pids+=($!)

echo "== four site agents, each with its own policy (Cleveland approves jobs by hand)"
for s in "${sites[@]}"; do
  # Each site's own copy of its config and policy, so its ledger, approvals and audit log land
  # in WORKDIR.
  mkdir -p "$work/sites/$s"
  approval=automatic
  [ "$s" = cleveland ] && approval=manual
  sed "s/^approval = \"automatic\"/approval = \"$approval\"/" "$root/examples/heart-disease/sites/policy/policy.toml" \
    > "$work/sites/$s/policy.toml"
  sed -e "s#path = \"../data/#path = \"$root/examples/heart-disease/data/#" \
      -e "s@^\[site\]@[site]\npolicy = \"policy.toml\"\naudit_log = \"audit.jsonl\"@" \
      "$root/examples/heart-disease/sites/$s.toml" > "$work/sites/$s/site.toml"
  "$A" run --config "$work/sites/$s/site.toml" --coordinator "$url" --tls "$work/pki/$s" 2> "$work/sites/$s/agent.log" &
  pids+=($!)
done
for _ in $(seq 100); do
  n=$("$C" sites --coordinator "$url" --tls "$work/pki/lead" 2>/dev/null | wc -l || true)
  [ "$n" -ge 4 ] && break
  sleep 0.2
done
"$C" sites --coordinator "$url" --tls "$work/pki/lead"

echo "== the research lead submits the job; Cleveland's administrator reviews and approves it"
"$C" submit "$root/examples/heart-disease/job.toml" --coordinator "$url" --tls "$work/pki/lead" --watch --out "$work/result" &
submit=$!
cfg="$work/sites/cleveland/site.toml"
for _ in $(seq 100); do
  "$A" jobs list --config "$cfg" 2>/dev/null | grep -q pending && break
  sleep 0.2
done
job=$("$A" jobs list --config "$cfg" --output json | sed -n 's/.*"job_hash": *"\([0-9a-f]\{64\}\)".*/\1/p' | head -1)
"$A" jobs show "$job" --config "$cfg"
"$A" jobs approve "$job" --config "$cfg" --by "Cleveland privacy officer"
wait "$submit"

echo "== the model card"
cat "$work/result/model-card.md" 2>/dev/null || echo "(no model card written)"

echo "== what Cleveland spent of its privacy budget, and its audit log"
"$A" ledger --config "$work/sites/cleveland/site.toml"
"$A" audit verify --log "$work/sites/cleveland/audit.jsonl"
"$C" audit verify --log "$work/state/coordinator.audit.jsonl"
