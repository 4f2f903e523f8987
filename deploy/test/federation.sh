#!/usr/bin/env bash
# The Compose federation across container hosts, with faults, for tests/deploy.rs (which
# asserts on what this collects) or by hand:
#
#   deploy/test/federation.sh OUT [BIN_DIR]
#
# BIN_DIR holds coordinator and site-agent built on Debian 12 (default target/debug). OUT gets
# the evidence: timings, image sizes, isolation probes, every job's report and model card,
# the coordinator's audit log, each site's audit log and ledger. Steps:
#
#  1. the image from the prebuilt binaries (deploy/docker/build-image.sh; the base image is
#     debootstrapped once and kept), then `compose up`: enrolment, coordinator, four sites;
#  2. job 1, the example job unchanged (mutual TLS, secure aggregation, DP), to the end;
#  3. isolation: a site cannot resolve or reach another site (that one's address answers the
#     coordinator), and a site's network is internal (no route elsewhere);
#  4. job 2, with Cleveland's container slowed (so rounds wait on it): Cleveland cut from its
#     network after round 2 (`docker network disconnect`); the round in progress completes
#     with the other three; Cleveland is connected again and rejoins the federation;
#  5. job 3: the coordinator's container killed (SIGKILL) after round 3 and started again;
#     the job resumes and ends;
#  6. the logs and ledgers, copied out.
#
# Containers, networks and volumes are the Compose project's (FEDCARE_PROJECT, default
# fedcare-e2e) and are removed at the end (FEDCARE_KEEP=1 keeps them for a look).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:?usage: $0 OUT [BIN_DIR]}
bin=${2:-$root/target/debug}
mkdir -p "$out" && out=$(cd "$out" && pwd)
project=${FEDCARE_PROJECT:-fedcare-e2e}
image=${FEDCARE_IMAGE:-fedcare:e2e}
sites=(cleveland hungarian switzerland va)
compose_file=$root/deploy/compose/docker-compose.yml

log() { printf '%(%H:%M:%S)T %s\n' -1 "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

command -v docker >/dev/null || die "docker is not installed"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is it started?)"
if docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose_cmd=(docker-compose)
else
  die "neither 'docker compose' nor 'docker-compose' is installed"
fi
export FEDCARE_IMAGE=$image
# A port of the host's loopback chosen by Docker, so the test never clashes with a trial.
export FEDCARE_PUBLISH=127.0.0.1:
compose() { "${compose_cmd[@]}" --ansi never -p "$project" -f "$compose_file" "$@"; }
declare -A ids=()
cid() { [ -n "${ids[$1]:-}" ] || ids[$1]=$(compose ps -q "$1"); echo "${ids[$1]}"; }

lead=$project-lead
cleanup() {
  set +e
  if [ "${FEDCARE_KEEP:-0}" = 1 ]; then
    log "kept: project $project (docker rm -f $lead; compose -p $project down -v)"
    return
  fi
  for s in coordinator "${sites[@]}"; do
    c=$(cid "$s" 2>/dev/null)
    [ -n "$c" ] && docker logs "$c" > "$out/logs/$s.log" 2>&1
  done
  docker rm -f "$lead" >/dev/null 2>&1
  compose down -v --remove-orphans >/dev/null 2>&1
}
mkdir -p "$out/logs"
trap cleanup EXIT
# Anything left by an interrupted run of the same project.
docker rm -f "$lead" >/dev/null 2>&1 || true
compose down -v --remove-orphans >/dev/null 2>&1 || true

# ---- 1. image and federation ----------------------------------------------------------------
t=$(now)
"$root/deploy/docker/build-image.sh" --bin "$bin" --tag "$image" >&2
echo "image_build_s=$(since "$t")" >> "$out/timings.env"
base=$(sed -n 's/^ARG DEBIAN_IMAGE=//p' "$root/deploy/docker/Dockerfile")
{
  echo "base $base $(docker image inspect --format '{{.Size}}' "$base")"
  echo "fedcare $image $(docker image inspect --format '{{.Size}}' "$image")"
} > "$out/images.txt"
docker image inspect --format '{{json .Config}}' "$image" > "$out/image-config.json"
docker run --rm --entrypoint /bin/sh "$image" -c \
  'id -u; ls /usr/local/bin; for t in cargo rustc gcc cc make strip; do command -v $t; done; ls /src 2>&1 | head -1; true' \
  > "$out/image-contents.txt"

log "compose up: enrolment, coordinator, four site agents"
t_up=$(now)
compose up -d >&2 2> "$out/logs/compose-up.log" || { cat "$out/logs/compose-up.log" >&2; die "compose up"; }
pki=$(docker ps -aq --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=pki")
docker logs "$pki" > "$out/logs/pki.log" 2>&1
lx() { docker exec "$lead" "$@"; }
audit() { docker exec "$coord" cat /var/lib/fedcare/coordinator.audit.jsonl 2>/dev/null || true; }
rounds_done() { # JOB_ID: rounds the coordinator recorded as completed for it
  audit | grep '"round_completed"' | grep -c "\"job_id\":\"$1\"" || true
}
released() { audit | grep '"model_released"' | grep -q "\"job_id\":\"$1\""; }
wait_until() { # TIMEOUT_S WHAT COMMAND...
  local limit=$1 what=$2 start; shift 2
  start=$(now)
  until "$@"; do
    awk -v s="$(since "$start")" -v l="$limit" 'BEGIN { exit !(s > l) }' && die "$what: not within $limit s"
    sleep 0.25
  done
}
at_least() { [ "$(rounds_done "$1")" -ge "$2" ]; }
for s in coordinator "${sites[@]}"; do cid "$s" > /dev/null; done   # fill the cache (compose ps is slow)
coord=$(cid coordinator)
sites_re="^($(IFS='|'; echo "${sites[*]}")) "
wait_sites() { # N TIMEOUT_S [SITE]: until N sites (and SITE among them) are connected, not lost
  local n=$1 limit=$2 must=${3:-} start got up
  start=$(now)
  while :; do
    got=$(lx coordinator sites 2>/dev/null || true)
    up=$(grep -E "$sites_re" <<<"$got" | grep -vi lost || true)
    if [ "$(grep -c . <<<"$up")" -ge "$n" ] && { [ -z "$must" ] || grep -q "^$must " <<<"$up"; }; then
      return 0
    fi
    awk -v s="$(since "$start")" -v l="$limit" 'BEGIN { exit !(s > l) }' && { echo "$got" >&2; return 1; }
    sleep 0.5
  done
}
all_connected() { [ "$(audit | grep -c '"site_connected"')" -ge 4 ]; }
wait_until 120 "the four sites' connections" all_connected
echo "up_to_sites_connected_s=$(since "$t_up")" >> "$out/timings.env"
# The research lead's container (its commands below run in it).
compose run -d --name "$lead" lead sleep infinity > /dev/null 2>> "$out/logs/compose-up.log" || die "lead container"
wait_sites 4 120 || die "the four sites are not all connected"
lx coordinator sites > "$out/sites-at-start.txt"
# Health as Docker sees it (the image's HEALTHCHECK: grpc.health.v1 over mutual TLS).
for _ in $(seq 60); do
  [ "$(docker inspect --format '{{.State.Health.Status}}' "$coord")" = healthy ] && break
  sleep 1
done
docker inspect --format '{{json .State.Health}}' "$coord" > "$out/coordinator-health.json"

# ---- 2. job 1: the example job, to the end ----------------------------------------------------
log "job 1: the example job (mutual TLS, secure aggregation, DP at epsilon 8)"
t=$(now)
: > "$out/job1.stdout"
lx coordinator submit /etc/fedcare/job.toml --watch --out /var/lib/fedcare/job1 > "$out/job1.stdout" 2> "$out/job1.stderr" &
submit=$!
job1=
for _ in $(seq 200); do job1=$(head -1 "$out/job1.stdout" | grep -oE '^[0-9a-f]{64}' || true); [ -n "$job1" ] && break; sleep 0.1; done
[ -n "$job1" ] || die "no job id from submit: $(cat "$out/job1.stderr")"
wait_until 300 "job 1's first round" at_least "$job1" 1
echo "up_to_first_round_s=$(since "$t_up")" >> "$out/timings.env"
wait "$submit" || die "job 1: submit --watch failed: $(tail -5 "$out/job1.stderr")"
echo "job1_s=$(since "$t")" >> "$out/timings.env"
echo "$job1" > "$out/job1.id"
mkdir -p "$out/job1"
for f in report.json model-card.json model-card.md; do lx cat "/var/lib/fedcare/job1/$f" > "$out/job1/$f"; done

# ---- 3. isolation -----------------------------------------------------------------------------
log "isolation: each site reaches the coordinator and nothing else"
ip_of() { docker inspect --format "{{(index .NetworkSettings.Networks \"${project}_$2\").IPAddress}}" "$(cid "$1")"; }
# Run inside a container: `probes ME LABEL=HOST:PORT... name:N=N...` prints, all probed at
# once, "ME LABEL open|refused|unreachable: ..." for each address and "ME name:N
# resolves|unresolved" for each name.
probes='
me=$1; shift
for t in "$@"; do
  label=${t%%=*} addr=${t#*=}
  case $label in
    name:*)
      { if timeout 3 getent hosts "$addr" > /dev/null; then r=resolves; else r=unresolved; fi
        echo "$me $label $r"; } & ;;
    *)
      { if err=$(timeout 3 bash -c "exec 3<>/dev/tcp/${addr%:*}/${addr##*:}" 2>&1); then r=open
        elif [[ $err == *refused* ]]; then r=refused
        else r="unreachable: ${err:-timed out}"; fi
        echo "$me $label $r"; } & ;;
  esac
done
wait'
{
  for s in "${sites[@]}"; do
    targets=("coordinator:50051=coordinator:50051")
    for o in "${sites[@]}"; do
      [ "$o" = "$s" ] && continue
      targets+=("$o:50051=$(ip_of "$o" "$o"):50051" "name:$o=$o")
    done
    docker exec "$(cid "$s")" bash -c "$probes" probes "$s" "${targets[@]}"
  done
  # The other sites' addresses are live: the coordinator, on every site's network, gets an
  # answer (a refusal: agents listen on nothing).
  targets=()
  for o in "${sites[@]}"; do targets+=("$o:50051=$(ip_of "$o" "$o"):50051"); done
  docker exec "$coord" bash -c "$probes" probes coordinator "${targets[@]}"
} | sort > "$out/isolation.txt"
for n in lead "${sites[@]}"; do
  echo "network $n internal=$(docker network inspect --format '{{.Internal}}' "${project}_$n")"
  echo "network $n containers=$(docker network inspect --format '{{range .Containers}}{{.Name}} {{end}}' "${project}_$n")"
done >> "$out/isolation.txt"
for s in "${sites[@]}"; do
  echo "$s mounts=$(docker inspect --format '{{range .Mounts}}{{.Destination}}={{if .Name}}{{.Name}}{{else}}{{.Source}}{{end}}:{{.RW}} {{end}}' "$(cid "$s")")"
  echo "$s user=$(docker exec "$(cid "$s")" id -u)"
done > "$out/site-containers.txt"
echo "coordinator user=$(docker exec "$coord" id -u)" >> "$out/site-containers.txt"

# Jobs 2 and 3: the example job under other names (a job's id is its spec's hash) and with
# longer local training, run while Cleveland's server is slow (its container throttled to 5%
# of a core): each round then waits on Cleveland for a second or more, so the cut and the
# kill land mid-round, not after a job that ended in three seconds.
variant() { # NAME ROUNDS EPOCHS
  sed -e "0,/^name = .*/s//name = \"$1\"/" -e "s/^rounds = .*/rounds = $2/" -e "s/^local_epochs = .*/local_epochs = $3/" \
    "$root/examples/heart-disease/job.toml"
}
rounds2=${FEDCARE_E2E_ROUNDS:-10}
epochs2=${FEDCARE_E2E_EPOCHS:-4}
variant heart-disease-cut "$rounds2" "$epochs2" | docker exec -i "$lead" sh -c 'cat > /var/lib/fedcare/job2.toml'
variant heart-disease-restart "$rounds2" "$epochs2" | docker exec -i "$lead" sh -c 'cat > /var/lib/fedcare/job3.toml'

# ---- 4. job 2: a site cut from the network mid-job --------------------------------------------
log "job 2: Cleveland (slowed) cut from its network after round 2"
cleveland=$(cid cleveland)
docker update --cpus "${FEDCARE_E2E_SLOW_CPUS:-0.05}" "$cleveland" > /dev/null
t=$(now)
job2=$(lx coordinator submit /var/lib/fedcare/job2.toml | head -1)
echo "$job2" > "$out/job2.id"
wait_until 300 "job 2's round 2" at_least "$job2" 2
cut_after=$(rounds_done "$job2")
docker network disconnect "${project}_cleveland" "$cleveland"
t_cut=$(now)
echo "cut_unix_ms=$(date +%s%3N)" >> "$out/timings.env"
log "  cut after $cut_after rounds; waiting for the round in progress to complete without it"
wait_until 120 "job 2's round after the cut" at_least "$job2" $((cut_after + 1))
{
  echo "cut_after_rounds=$cut_after"
  echo "cut_to_next_round_s=$(since "$t_cut")"
} >> "$out/timings.env"
wait_until 120 "a second round after the cut" at_least "$job2" $((cut_after + 2))
lx coordinator sites > "$out/sites-during-cut.txt" 2>&1 || true
docker network connect "${project}_cleveland" "$cleveland"
t_back=$(now)
log "  Cleveland connected again"
wait_until 600 "job 2's end" released "$job2"
echo "job2_s=$(since "$t")" >> "$out/timings.env"
wait_sites 4 120 cleveland || die "Cleveland did not reconnect within 120 s of its network coming back"
echo "reconnect_s=$(since "$t_back")" >> "$out/timings.env"
lx coordinator sites > "$out/sites-after-cut.txt"
lx coordinator fetch "$job2" --out /var/lib/fedcare/job2 > /dev/null
mkdir -p "$out/job2"
for f in report.json model-card.json; do lx cat "/var/lib/fedcare/job2/$f" > "$out/job2/$f"; done

# ---- 5. job 3: the coordinator killed mid-job and started again --------------------------------
log "job 3: the coordinator killed after round 3 and started again"
t=$(now)
job3=$(lx coordinator submit /var/lib/fedcare/job3.toml | head -1)
echo "$job3" > "$out/job3.id"
wait_until 300 "job 3's round 3" at_least "$job3" 3
docker kill --signal KILL "$coord" > /dev/null
killed_after=$(docker run --rm --volumes-from "$coord" --entrypoint /bin/sh "$image" -c \
  'cat /var/lib/fedcare/coordinator.audit.jsonl' | grep '"round_completed"' | grep -c "\"job_id\":\"$job3\"" || true)
echo "killed_after_rounds=$killed_after" >> "$out/timings.env"
sleep 2
compose start coordinator 2>> "$out/logs/compose-up.log"
t_restart=$(now)
wait_until 600 "job 3's end after the restart" released "$job3"
{
  echo "restart_to_end_s=$(since "$t_restart")"
  echo "job3_s=$(since "$t")"
} >> "$out/timings.env"
lx coordinator fetch "$job3" --out /var/lib/fedcare/job3 > /dev/null
mkdir -p "$out/job3"
for f in report.json model-card.json; do lx cat "/var/lib/fedcare/job3/$f" > "$out/job3/$f"; done
wait_sites 4 120 || true
lx coordinator sites > "$out/sites-at-end.txt" 2>&1 || true
docker update --cpus "$(docker info --format "{{.NCPU}}")" "$cleveland" > /dev/null

# ---- 6. the records -------------------------------------------------------------------------
log "collecting the coordinator's audit log and every site's audit log and ledger"
audit > "$out/coordinator.audit.jsonl"
docker exec "$coord" coordinator audit verify --log /var/lib/fedcare/coordinator.audit.jsonl > "$out/coordinator.audit-verify.txt" 2>&1 \
  || echo "FAILED" >> "$out/coordinator.audit-verify.txt"
for s in "${sites[@]}"; do
  c=$(cid "$s")
  mkdir -p "$out/sites/$s"
  docker exec "$c" cat /var/lib/fedcare/audit.jsonl > "$out/sites/$s/audit.jsonl"
  docker exec "$c" cat /var/lib/fedcare/ledger.jsonl > "$out/sites/$s/ledger.jsonl"
  docker exec "$c" site-agent ledger --config /etc/fedcare/site.toml --output json > "$out/sites/$s/ledger.json"
  docker exec "$c" site-agent audit verify --log /var/lib/fedcare/audit.jsonl > "$out/sites/$s/audit-verify.txt" 2>&1 \
    || echo "FAILED" >> "$out/sites/$s/audit-verify.txt"
done
echo "total_s=$(since "$t_up")" >> "$out/timings.env"
log "done: evidence in $out"
