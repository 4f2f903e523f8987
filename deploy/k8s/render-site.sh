#!/usr/bin/env bash
# Renders the Kubernetes manifests of one hospital's site agent: a ConfigMap with the site's
# config and policy, a PersistentVolumeClaim for its state (ledger, audit log, signing key,
# approvals), a Deployment (one replica: the ledger has one writer) and a NetworkPolicy
# (nothing in; out only to the coordinator's port and DNS).
#
#   deploy/k8s/render-site.sh --site cleveland --config site.toml --policy policy.toml \
#       [--namespace fedcare] [--image fedcare:latest] [--coordinator-cidr 203.0.113.10/32] \
#       | kubectl apply -f -
#
# The config is read as the container sees it: TLS folder /etc/fedcare/tls, policy
# /etc/fedcare/policy/policy.toml, state under /var/lib/fedcare, records under /data
# (deploy/compose/sites/*/site.toml are such configs). Two things are not rendered, being the
# hospital's own: the Secret fedcare-site-<site>-tls (from the site's TLS folder) and the
# claim fedcare-site-<site>-data holding its records (see deploy/README.md).
set -euo pipefail
site='' config='' policy='' ns=fedcare image=fedcare:latest cidr=''
while [ $# -gt 0 ]; do
  case $1 in
    --site) site=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    --namespace) ns=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --coordinator-cidr) cidr=$2; shift 2 ;;
    *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
  esac
done
[ -n "$site" ] && [ -f "$config" ] && [ -f "$policy" ] || { echo "give --site NAME, --config FILE and --policy FILE (see $0)" >&2; exit 2; }
[[ $site =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]] || { echo "--site $site: use lowercase letters, digits and '-' (a Kubernetes name)" >&2; exit 2; }
indent() { sed 's/^/    /' "$1"; }
name=fedcare-site-$site
if [ -n "$cidr" ]; then
  to="      - to:
          - ipBlock:
              cidr: $cidr
        ports:"
else
  to="      - ports:"
fi
cat <<YAML
# Rendered by deploy/k8s/render-site.sh for site $site.
apiVersion: v1
kind: ConfigMap
metadata:
  name: $name
  namespace: $ns
  labels: {app.kubernetes.io/name: $name, app.kubernetes.io/component: site-agent, app.kubernetes.io/part-of: fedcare}
data:
  site.toml: |
$(indent "$config")
  policy.toml: |
$(indent "$policy")
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: $name-state
  namespace: $ns
  labels: {app.kubernetes.io/name: $name, app.kubernetes.io/part-of: fedcare}
spec:
  accessModes: [ReadWriteOnce]
  resources:
    requests:
      storage: 1Gi
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $name
  namespace: $ns
  labels: {app.kubernetes.io/name: $name, app.kubernetes.io/component: site-agent, app.kubernetes.io/part-of: fedcare}
spec:
  # One agent per site: its ledger and audit log have a single writer. Recreate, never two
  # at once during an update.
  replicas: 1
  strategy:
    type: Recreate
  selector:
    matchLabels:
      app.kubernetes.io/name: $name
  template:
    metadata:
      labels: {app.kubernetes.io/name: $name, app.kubernetes.io/component: site-agent, app.kubernetes.io/part-of: fedcare}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 30
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
        fsGroupChangePolicy: OnRootMismatch
        seccompProfile:
          type: RuntimeDefault
      containers:
        - name: site-agent
          image: $image
          imagePullPolicy: IfNotPresent
          args: [site-agent, run, --config, /etc/fedcare/site.toml]
          env:
            - name: FEDCARE_LOG_FORMAT
              value: json
          # No probes: the agent serves nothing (it only dials out) and exits non-zero on a
          # fault it cannot retry, which restarts the pod. A probe on the coordinator's health
          # would restart every site whenever the coordinator is down; the agents already
          # reconnect with backoff.
          resources:
            requests:
              cpu: 250m
              memory: 256Mi
            limits:
              memory: 1Gi
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: [ALL]
          volumeMounts:
            - {name: config, mountPath: /etc/fedcare/site.toml, subPath: site.toml, readOnly: true}
            - {name: config, mountPath: /etc/fedcare/policy/policy.toml, subPath: policy.toml, readOnly: true}
            # Manual approvals are kept beside the policy; here they persist on the state volume.
            - {name: state, mountPath: /etc/fedcare/policy/approvals, subPath: approvals}
            - {name: state, mountPath: /var/lib/fedcare, subPath: state}
            - {name: tls, mountPath: /etc/fedcare/tls, readOnly: true}
            - {name: data, mountPath: /data, readOnly: true}
            - {name: tmp, mountPath: /tmp}
      volumes:
        - name: config
          configMap:
            name: $name
        - name: state
          persistentVolumeClaim:
            claimName: $name-state
        - name: tls
          secret:
            secretName: $name-tls
            defaultMode: 0440
        - name: data
          persistentVolumeClaim:
            claimName: $name-data
            readOnly: true
        - name: tmp
          emptyDir:
            medium: Memory
            sizeLimit: 16Mi
---
# Nothing connects in to a site. Out: the coordinator's gRPC port (narrow it with
# --coordinator-cidr) and DNS.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: $name
  namespace: $ns
  labels: {app.kubernetes.io/name: $name, app.kubernetes.io/part-of: fedcare}
spec:
  podSelector:
    matchLabels:
      app.kubernetes.io/name: $name
  policyTypes: [Ingress, Egress]
  ingress: []
  egress:
$to
          - port: 50051
            protocol: TCP
      - ports:
          - port: 53
            protocol: UDP
          - port: 53
            protocol: TCP
YAML
