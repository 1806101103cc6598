# shellcheck shell=bash
# scripts/lib/node.sh — the node of `scripts/testenv up --node`, sourced by scripts/testenv.
#
# A node that runs pods the way a cluster does: containerd + runc with the bridge CNI
# plugin, kubelet, kube-proxy (iptables), kube-controller-manager and kube-scheduler at
# $KUBE_VERSION. Everything it makes lives under $STATE/node or carries the names below,
# so `down` removes exactly that: pods, containers, mounts, cgroups, iptables chains, the
# bridge, the routes and the sysctls it changed.
#
# Addresses (nothing leaves the machine):
#   NODE_IP        on a device this script creates (never on a real interface); the
#                  kubelet, DVCR (through a forwarder) and test servers for pods listen here
#   POD_CIDR       pods, on that bridge; the /16 around it is an unreachable route
#   SERVICE_CIDR   ClusterIPs, DNATed by kube-proxy; an unreachable route as a safety net,
#                  so that a packet for a ClusterIP without a rule is dropped, not routed out
# Only one node environment per machine: the bridge, the sysctls and the iptables chains
# are machine-wide. A second `up --node` in another TESTENV_DIR is refused.

NODE_NAME=testenv-node
NODE_IP=198.51.100.10               # TEST-NET-2 (RFC 5737): never a real host
NODE_BRIDGE=ictest0                 # the pods' bridge, made by the CNI plugin
NODE_IP_DEVICE=ictest-node          # holds NODE_IP (the CNI plugin wants its bridge to itself)
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
POD_SUPERNET=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16           # as kube-apiserver --service-cluster-ip-range
PAUSE_IMAGE=registry.k8s.io/pause:3.10
NODE_OWNER_FILE=/run/image-catalog-testenv-node.owner
NODE_COMPONENTS=(kubelet kube-proxy kube-scheduler kube-controller-manager apiserver-node dvcr-node containerd)
NODE_KUBE_BINARIES=(kubelet kube-proxy kube-controller-manager kube-scheduler)
NODE_APT_PACKAGES=(containerd:containerd runc:runc containernetworking-plugins:
    iptables:iptables conntrack:conntrack socat:socat iproute2:ip ethtool:ethtool gcc:gcc libc6-dev:)

NODE=$STATE/node

node_ensure_packages() {
    local missing=() entry pkg cmd
    for entry in "${NODE_APT_PACKAGES[@]}"; do
        pkg=${entry%%:*} cmd=${entry#*:}
        if [ -n "$cmd" ]; then have_cmd "$cmd" && continue; else have_pkg "$pkg" && continue; fi
        missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0
    [ "${TESTENV_SKIP_APT:-0}" != 1 ] || die "TESTENV_SKIP_APT=1 but the node needs: ${missing[*]}"
    apt_install "${missing[@]}"
}

# Sets KUBELET_BIN, KUBE_PROXY_BIN, KCM_BIN, SCHEDULER_BIN. Built together in one `go build`
# (they share most packages with kube-apiserver, whose build cache makes this a few minutes).
node_ensure_binaries() {
    exec 8>>"$CACHE/.build.lock"
    if ! flock -n 8; then
        log "waiting for another testenv build (lock $CACHE/.build.lock)"
        flock 8
    fi
    local name missing=()
    for name in "${NODE_KUBE_BINARIES[@]}"; do
        kube_bin_ok "$BIN_DIR/$name-$KUBE_VERSION" || missing+=("$name")
    done
    ((${#missing[@]} == 0)) || build_kube_many "${missing[@]}"
    exec 8>&-
    KUBELET_BIN=$BIN_DIR/kubelet-$KUBE_VERSION
    KUBE_PROXY_BIN=$BIN_DIR/kube-proxy-$KUBE_VERSION
    KCM_BIN=$BIN_DIR/kube-controller-manager-$KUBE_VERSION
    SCHEDULER_BIN=$BIN_DIR/kube-scheduler-$KUBE_VERSION
    node_ensure_pause_image_archive
}

# The sandbox image, offline: the Kubernetes module's own pause.c, linked statically, in a
# one-layer OCI image saved as a docker archive that `ctr import` takes. Cached by version.
PAUSE_ARCHIVE=
node_ensure_pause_image_archive() {
    PAUSE_ARCHIVE=$CACHE/images/pause-$KUBE_VERSION.tar
    [ -s "$PAUSE_ARCHIVE" ] && return 0
    local moddir work
    moddir=$("$GO_BIN" env GOMODCACHE)/k8s.io/kubernetes@$KUBE_VERSION
    [ -f "$moddir/build/pause/linux/pause.c" ] ||
        (cd "$(mktemp -d)" && "$GO_BIN" mod download "k8s.io/kubernetes@$KUBE_VERSION") ||
        die "cannot download k8s.io/kubernetes@$KUBE_VERSION for pause.c"
    work=$(mktemp -d)
    mkdir -p "$work/rootfs" "$work/layout/blobs/sha256" "$CACHE/images"
    quiet gcc -Os -static -DVERSION="$KUBE_VERSION-testenv" -o "$work/rootfs/pause" \
        "$moddir/build/pause/linux/pause.c"
    strip "$work/rootfs/pause" 2>/dev/null || true
    tar -C "$work/rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        -cf "$work/layer.tar" pause
    local layer_digest layer_size config config_digest manifest manifest_digest
    layer_digest=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
    layer_size=$(stat -c %s "$work/layer.tar")
    cp "$work/layer.tar" "$work/layout/blobs/sha256/$layer_digest"
    config='{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:'$layer_digest'"]}}'
    config_digest=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
    printf '%s' "$config" >"$work/layout/blobs/sha256/$config_digest"
    manifest='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:'$config_digest'","size":'${#config}'},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:'$layer_digest'","size":'$layer_size'}]}'
    manifest_digest=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
    printf '%s' "$manifest" >"$work/layout/blobs/sha256/$manifest_digest"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$work/layout/oci-layout"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"pause"}}]}' \
        "$manifest_digest" "${#manifest}" >"$work/layout/index.json"
    quiet skopeo copy --quiet "oci:$work/layout:pause" "docker-archive:$work/pause.tar:$PAUSE_IMAGE"
    mv -f "$work/pause.tar" "$PAUSE_ARCHIVE"
    rm -rf "$work"
    log "built the pause image ($PAUSE_IMAGE) from pause.c"
}

# ---- certificates and configuration ------------------------------------------

node_gen_pki() {
    local k=$PKI/kube
    new_cert "$k" "$k/kubelet-client" "/O=system:nodes/CN=system:node:$NODE_NAME" client
    new_cert "$k" "$k/kube-proxy" "/CN=system:kube-proxy" client
    new_cert "$k" "$k/kube-controller-manager" "/CN=system:kube-controller-manager" client
    new_cert "$k" "$k/kube-scheduler" "/CN=system:kube-scheduler" client
    new_cert "$k" "$k/kubelet-serving" "/O=system:nodes/CN=system:node:$NODE_NAME" node_server
}

# node_kubeconfig NAME CERT_BASE -> $NODE/NAME.kubeconfig
node_kubeconfig() {
    local k=$PKI/kube
    (
        umask 077
        cat >"$NODE/$1.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $k/ca.crt
users:
- name: $1
  user:
    client-certificate: $2.crt
    client-key: $2.key
contexts:
- name: testenv
  context: {cluster: testenv, user: $1}
current-context: testenv
EOF
    )
}

node_write_configs() {
    local k=$PKI/kube c=$NODE/containerd
    mkdir -p "$c/root" "$c/state" "$c/certs.d/$NODE_IP:$DVCR_PORT" "$NODE/cni/net.d" \
        "$NODE/cni/ipam" "$NODE/kubelet" "$NODE/pod-logs"
    # DVCR for image pulls: trust its CA (pull credentials come from imagePullSecrets).
    cat >"$c/certs.d/$NODE_IP:$DVCR_PORT/hosts.toml" <<EOF
server = "https://$NODE_IP:$DVCR_PORT"
[host."https://$NODE_IP:$DVCR_PORT"]
  capabilities = ["pull", "resolve"]
  ca = "$PKI/dvcr-ca/ca.crt"
EOF
    # Public registries lead to a closed local port: a pod naming an image from outside
    # fails to pull at once, and containerd never looks a public registry up.
    local registry
    for registry in docker.io registry.k8s.io quay.io ghcr.io gcr.io registry-1.docker.io; do
        mkdir -p "$c/certs.d/$registry"
        printf 'server = "https://127.0.0.1:9"\n[host."https://127.0.0.1:9"]\n  capabilities = ["pull", "resolve"]\n' \
            >"$c/certs.d/$registry/hosts.toml"
    done
    # restrict_oom_score_adj: root here lacks CAP_SYS_RESOURCE, and without it every
    # sandbox fails with "can't get final child's PID from pipe".
    cat >"$c/config.toml" <<EOF
# generated by scripts/testenv up --node
version = 2
root = "$c/root"
state = "$c/state"
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "$(command -v runc)"
        Root = "$c/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$c/certs.d"
EOF
    cat >"$NODE/cni/net.d/10-testenv.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "testenv",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
    # Pods resolve nothing: there is no cluster DNS, and no query may leave the machine.
    : >"$NODE/resolv.conf"
    node_kubeconfig kubelet "$k/kubelet-client"
    node_kubeconfig kube-proxy "$k/kube-proxy"
    node_kubeconfig kube-controller-manager "$k/kube-controller-manager"
    node_kubeconfig kube-scheduler "$k/kube-scheduler"
    cat >"$NODE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
containerRuntimeEndpoint: unix://$c/containerd.sock
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
resolvConf: $NODE/resolv.conf
podLogsDir: $NODE/pod-logs
tlsCertFile: $k/kubelet-serving.crt
tlsPrivateKeyFile: $k/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $k/ca.crt}
authorization: {mode: Webhook}
serializeImagePulls: false
maxPods: 60
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: 100Mi, nodefs.available: "1%", imagefs.available: "1%"}
nodeStatusUpdateFrequency: 4s
fileCheckFrequency: 60s
staticPodPath: ""
shutdownGracePeriod: 0s
EOF
    cat >"$NODE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: $NODE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT
metricsBindAddress: 127.0.0.1:$KUBE_PROXY_METRICS_PORT
clusterCIDR: $POD_SUPERNET
nodePortAddresses: [$NODE_IP/32]
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# ---- network ----------------------------------------------------------------

# Sysctls changed for the node, with the value to put back; saved once per node start.
NODE_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)

node_network_up() {
    mkdir -p "$NODE"
    local s
    : >"$NODE/sysctl.saved"
    for s in "${NODE_SYSCTLS[@]}"; do
        printf '%s=%s\n' "$s" "$(sysctl -n "$s")" >>"$NODE/sysctl.saved"
    done
    # A bridge without ports: a device of our own for the address, never a real interface.
    ip link show "$NODE_IP_DEVICE" >/dev/null 2>&1 || ip link add "$NODE_IP_DEVICE" type bridge
    ip addr replace "$NODE_IP/32" dev "$NODE_IP_DEVICE"
    ip link set "$NODE_IP_DEVICE" up
    sysctl -qw net.ipv4.ip_forward=1
    sysctl -qw net.bridge.bridge-nf-call-iptables=1
    # Safety nets: a pod or service address without a more specific local route is dropped.
    ip route replace unreachable "$SERVICE_CIDR"
    ip route replace unreachable "$POD_SUPERNET"
}

node_network_down() {
    local line
    if [ -f "$NODE/sysctl.saved" ]; then
        while IFS= read -r line; do
            [ -n "$line" ] && sysctl -qw "$line" 2>/dev/null || true
        done <"$NODE/sysctl.saved"
        rm -f "$NODE/sysctl.saved"
    fi
    ip route del unreachable "$SERVICE_CIDR" 2>/dev/null || true
    ip route del unreachable "$POD_SUPERNET" 2>/dev/null || true
    ip link del "$NODE_BRIDGE" 2>/dev/null || true
    ip link del "$NODE_IP_DEVICE" 2>/dev/null || true
    # kube-proxy's own cleanup, then whatever KUBE-* chains are left (the kubelet's).
    if [ -x "${KUBE_PROXY_BIN:-}" ] && [ -f "$NODE/kube-proxy.yaml" ]; then
        "$KUBE_PROXY_BIN" --cleanup --config="$NODE/kube-proxy.yaml" >/dev/null 2>&1 || true
    fi
    local table chain
    for table in filter nat mangle; do
        { iptables -t "$table" -S 2>/dev/null || true; } | { grep -- '-j KUBE-\|^-A KUBE-' || true; } |
            sed 's/^-A /-D /' | while IFS= read -r line; do
                # shellcheck disable=SC2086 # a rule is a list of words
                iptables -t "$table" $line 2>/dev/null || true
            done
        for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
            iptables -t "$table" -F "$chain" 2>/dev/null || true
        done
        for chain in $(iptables -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }'); do
            iptables -t "$table" -X "$chain" 2>/dev/null || true
        done
    done
}

# ---- components ---------------------------------------------------------------

launch_containerd() {
    launch containerd containerd --config "$NODE/containerd/config.toml"
}
containerd_ready() { ctr --address "$NODE/containerd/containerd.sock" version >/dev/null 2>&1; }

node_import_pause() {
    quiet ctr --address "$NODE/containerd/containerd.sock" -n k8s.io images import \
        --no-unpack=false "$PAUSE_ARCHIVE"
}

# The apiserver listens on 127.0.0.1 and advertises the node address (an Endpoints address
# may not be loopback): pods reach it as the `kubernetes` Service, which kube-proxy DNATs to
# the node address, where this forwarder takes it to 127.0.0.1.
launch_apiserver_node() {
    launch apiserver-node socat -L "$NODE/apiserver-node.lock" \
        "TCP-LISTEN:$APISERVER_PORT,bind=$NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$APISERVER_PORT"
}
apiserver_node_ready() {
    [ "$("${CURL[@]}" --cacert "$PKI/kube/ca.crt" "https://$NODE_IP:$APISERVER_PORT/livez" 2>/dev/null)" = ok ]
}

# DVCR listens on 127.0.0.1; pods and containerd reach it on the node address.
launch_dvcr_node() {
    # -L: a lock file under the state dir puts $STATE/ on socat's command line (pid_alive).
    launch dvcr-node socat -L "$NODE/dvcr-node.lock" \
        "TCP-LISTEN:$DVCR_PORT,bind=$NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$DVCR_PORT"
}
dvcr_node_ready() {
    [ "$("${CURL[@]}" -o /dev/null -w '%{http_code}' --cacert "$PKI/dvcr-ca/ca.crt" \
        "https://$NODE_IP:$DVCR_PORT/v2/" 2>/dev/null)" = 401 ]
}

launch_kcm() {
    launch kube-controller-manager "$KCM_BIN" \
        --kubeconfig="$NODE/kube-controller-manager.kubeconfig" \
        --authentication-kubeconfig="$NODE/kube-controller-manager.kubeconfig" \
        --authorization-kubeconfig="$NODE/kube-controller-manager.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$KCM_PORT" \
        --service-account-private-key-file="$PKI/kube/sa.key" \
        --root-ca-file="$PKI/kube/ca.crt" \
        --use-service-account-credentials=true \
        --cluster-signing-cert-file="$PKI/kube/ca.crt" \
        --cluster-signing-key-file="$PKI/kube/ca.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --allocate-node-cidrs=false \
        --leader-elect=false \
        --node-monitor-grace-period=20s \
        --profiling=false --v=1
}
kcm_ready() { [ "$("${CURL[@]}" -k "https://127.0.0.1:$KCM_PORT/healthz" 2>/dev/null)" = ok ]; }

launch_scheduler() {
    launch kube-scheduler "$SCHEDULER_BIN" \
        --kubeconfig="$NODE/kube-scheduler.kubeconfig" \
        --authentication-kubeconfig="$NODE/kube-scheduler.kubeconfig" \
        --authorization-kubeconfig="$NODE/kube-scheduler.kubeconfig" \
        --bind-address=127.0.0.1 --secure-port="$SCHEDULER_PORT" \
        --leader-elect=false --profiling=false --v=1
}
scheduler_ready() { [ "$("${CURL[@]}" -k "https://127.0.0.1:$SCHEDULER_PORT/healthz" 2>/dev/null)" = ok ]; }

launch_kube_proxy() {
    launch kube-proxy "$KUBE_PROXY_BIN" --config="$NODE/kube-proxy.yaml" --v=1
}
kube_proxy_ready() { [ "$("${CURL[@]}" "http://127.0.0.1:$KUBE_PROXY_HEALTHZ_PORT/healthz" -o /dev/null -w '%{http_code}' 2>/dev/null)" = 200 ]; }

launch_kubelet() {
    launch kubelet "$KUBELET_BIN" \
        --config="$NODE/kubelet.yaml" \
        --kubeconfig="$NODE/kubelet.kubeconfig" \
        --root-dir="$NODE/kubelet" \
        --cert-dir="$NODE/kubelet/pki" \
        --hostname-override="$NODE_NAME" \
        --node-ip="$NODE_IP" \
        --node-labels="node.kubernetes.io/testenv=true" \
        --v=1
}
node_ready() {
    [ "$(kc get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ] &&
        [ -z "$(kc get node "$NODE_NAME" -o 'jsonpath={.spec.taints}' 2>/dev/null)" ]
}

# ---- lifecycle ----------------------------------------------------------------

# One node environment per machine: the bridge, the iptables chains and the sysctls are
# shared by every TESTENV_DIR. The owner file names the state dir that has it.
node_claim() {
    if [ -f "$NODE_OWNER_FILE" ]; then
        local owner
        owner=$(<"$NODE_OWNER_FILE")
        if [ "$owner" != "$STATE" ] && [ -d "$owner/node" ]; then
            die "a node environment already runs for $owner (one per machine); 'TESTENV_DIR=$owner scripts/testenv down' first"
        fi
    fi
    printf '%s\n' "$STATE" >"$NODE_OWNER_FILE"
}

node_is_up() {
    [ -f "$NODE/up" ] || return 1
    local c
    for c in "${NODE_COMPONENTS[@]}"; do pid_alive "$PIDS/$c.pid" >/dev/null || return 1; done
    local deadline=$((SECONDS + 60))
    until node_ready; do
        ((SECONDS < deadline)) || return 1
        sleep 1
    done
}

node_load_state() {
    [ -r "$NODE/state" ] || return 1
    # shellcheck disable=SC1091
    . "$NODE/state"
}

node_up() {
    [ "$(id -u)" = 0 ] || die "the node needs root (network, cgroups, mounts)"
    if node_load_state && node_is_up; then
        log "node already up"
        return 0
    fi
    node_claim
    node_down_quiet
    node_ensure_packages
    node_ensure_binaries
    local t0=$SECONDS
    read -r KUBELET_PORT KUBELET_HEALTHZ_PORT KUBE_PROXY_HEALTHZ_PORT KUBE_PROXY_METRICS_PORT \
        KCM_PORT SCHEDULER_PORT < <(free_ports 6) || true
    [ -n "${SCHEDULER_PORT:-}" ] || die "could not find free ports"
    mkdir -p "$NODE"
    {
        printf '%s=%q\n' KUBELET_PORT "$KUBELET_PORT" KUBELET_HEALTHZ_PORT "$KUBELET_HEALTHZ_PORT" \
            KUBE_PROXY_HEALTHZ_PORT "$KUBE_PROXY_HEALTHZ_PORT" \
            KUBE_PROXY_METRICS_PORT "$KUBE_PROXY_METRICS_PORT" KCM_PORT "$KCM_PORT" \
            SCHEDULER_PORT "$SCHEDULER_PORT" KUBELET_BIN "$KUBELET_BIN" \
            KUBE_PROXY_BIN "$KUBE_PROXY_BIN"
    } >"$NODE/state"
    node_gen_pki
    node_write_configs
    node_network_up
    start_with_retry containerd 30 launch_containerd containerd_ready
    node_import_pause
    start_with_retry apiserver-node 10 launch_apiserver_node apiserver_node_ready
    start_with_retry dvcr-node 10 launch_dvcr_node dvcr_node_ready
    start_with_retry kube-controller-manager 60 launch_kcm kcm_ready
    start_with_retry kube-scheduler 60 launch_scheduler scheduler_ready
    # kube-proxy before any pod: without its rules a ClusterIP goes nowhere. It is healthy
    # once its node exists and its rules are synced, so both start before either is awaited;
    # pods wait for the node to be Ready, which comes after.
    launch_kube_proxy
    launch_kubelet
    local rc=0
    wait_for 120 kubelet node_ready || rc=$?
    ((rc == 0)) || fail_with_log kubelet "node $NODE_NAME not Ready"
    wait_for 60 kube-proxy kube_proxy_ready || rc=$?
    ((rc == 0)) || fail_with_log kube-proxy "not healthy"
    node_write_chart_values
    touch "$NODE/up"
    log "node $NODE_NAME Ready in $((SECONDS - t0))s at $NODE_IP"
}

# What installs the chart into this environment: the DVCR address pods use, its CA, the
# credentials (the chart makes the dockerconfigjson Secret from them), the upload URL.
node_write_chart_values() {
    (
        umask 077
        {
            echo "# generated by scripts/testenv up --node: helm install ... -f $NODE/chart-values.yaml"
            echo "dvcr:"
            echo "  registry: \"$NODE_IP:$DVCR_PORT\""
            echo "  ca: |"
            sed 's/^/    /' "$PKI/dvcr-ca/ca.crt"
            echo "  auth:"
            echo "    username: \"$DVCR_USERNAME\""
            echo "    password: \"$DVCR_PASSWORD\""
        } >"$NODE/chart-values.yaml"
    )
}

# Stop the node's processes, then remove what they left: containers' processes (by their
# cgroups), network namespaces, mounts, cgroups, the network, the state.
node_down_quiet() {
    node_load_state || true
    local c
    for c in "${NODE_COMPONENTS[@]}"; do stop_one "$c"; done
    node_kill_pods
    node_sweep
    node_unmount
    node_network_down
    local ns
    for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }' | grep '^cni-' || true); do
        ip netns del "$ns" 2>/dev/null || true
    done
    node_remove_cgroups
    rm -rf "$NODE"
    if [ -f "$NODE_OWNER_FILE" ] && [ "$(<"$NODE_OWNER_FILE")" = "$STATE" ]; then
        rm -f "$NODE_OWNER_FILE"
    fi
}

# Every process of a pod lives in a cgroup under kubepods (cgroupfs driver).
node_kill_pods() {
    local pass f pid found
    for pass in 1 2 3 4 5; do
        found=0
        for f in /sys/fs/cgroup/*/kubepods/cgroup.procs /sys/fs/cgroup/*/kubepods/*/cgroup.procs \
            /sys/fs/cgroup/*/kubepods/*/*/cgroup.procs /sys/fs/cgroup/*/kubepods/*/*/*/cgroup.procs; do
            [ -r "$f" ] || continue
            while IFS= read -r pid; do
                [ -n "$pid" ] || continue
                found=1
                kill -KILL "$pid" 2>/dev/null || true
            done <"$f"
        done
        ((found)) || break
        sleep 0.2
    done
}

# containerd's shims outlive containerd; each names the node's socket path.
node_sweep() {
    local proc pid cmdline
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        cmdline=$(tr '\0' ' ' 2>/dev/null <"$proc/cmdline") || continue
        case $cmdline in *"$NODE/"*) kill -KILL "$pid" 2>/dev/null || true ;; esac
    done
}

node_unmount() {
    local m
    # Deepest first; lazy, since a dying container may still hold one.
    for m in $(awk -v s="$NODE/" 'index($2, s) == 1 { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    for m in $(awk '$2 ~ "^/run/netns/cni-" { print $2 }' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
}

node_remove_cgroups() {
    local d
    for d in $(find /sys/fs/cgroup/*/kubepods -depth -type d 2>/dev/null); do
        rmdir "$d" 2>/dev/null || true
    done
}

node_status() {
    node_load_state || { echo "node           not started (up --node)"; return 0; }
    local c pid
    for c in "${NODE_COMPONENTS[@]}"; do
        if pid=$(pid_alive "$PIDS/$c.pid"); then
            printf '%-24s running, pid %s\n' "$c" "$pid"
        else
            printf '%-24s not running\n' "$c"
        fi
    done
    if node_ready; then echo "node $NODE_NAME         Ready at $NODE_IP"; else echo "node $NODE_NAME         NOT Ready"; fi
}
