#!/bin/bash
# The broker, configured as the official apache/kafka image configures it: every KAFKA_*
# variable (but the JVM and logging ones) is a server property, KAFKA_FOO_BAR -> foo.bar
# (__ -> _, ___ -> -); without any, a single-node broker+controller on :9092/:9093.
# Storage is formatted on first start with CLUSTER_ID (default as in the official image).
set -euo pipefail
CONFIG=/opt/kafka/config/server.properties
DEFAULT_LOG_DIRS=/var/lib/kafka/data

props=()
for var in $(compgen -e); do
    case "$var" in
        KAFKA_VERSION | KAFKA_HEAP_OPTS | KAFKA_LOG4J_OPTS | KAFKA_OPTS | KAFKA_JMX_OPTS | KAFKA_JVM_PERFORMANCE_OPTS | \
            KAFKA_GC_LOG_OPTS | KAFKA_LOG4J_ROOT_LOGLEVEL | KAFKA_LOG4J_LOGGERS | KAFKA_TOOLS_LOG4J_LOGLEVEL | \
            KAFKA_TOOLS_HEAP_OPTS | KAFKA_JMX_HOSTNAME | KAFKA_JMX_PORT) continue ;;
        KAFKA_*) ;;
        *) continue ;;
    esac
    name="${var#KAFKA_}"
    name="${name,,}"
    name="${name//___/-}"
    name="${name//__/@}"
    name="${name//_/.}"
    name="${name//@/_}"
    props+=("${name}=${!var}")
done
if ((${#props[@]} == 0)); then
    props=(process.roles=broker,controller node.id=1 controller.quorum.voters=1@localhost:9093
        listeners=PLAINTEXT://:9092,CONTROLLER://:9093 advertised.listeners=PLAINTEXT://localhost:9092
        controller.listener.names=CONTROLLER inter.broker.listener.name=PLAINTEXT
        listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
        offsets.topic.replication.factor=1 transaction.state.log.replication.factor=1
        transaction.state.log.min.isr=1 share.coordinator.state.topic.replication.factor=1
        share.coordinator.state.topic.min.isr=1)
fi
{
    echo "# written by /opt/kafka/bin/run.sh from the KAFKA_* environment"
    printf '%s\n' "${props[@]}"
    printf '%s\n' "${props[@]}" | grep -q '^log\.dirs=' || echo "log.dirs=${DEFAULT_LOG_DIRS}"
} >"$CONFIG"
echo "run.sh: server.properties:" >&2
sed -e 's/^\([^=]*\(password\|secret\)[^=]*\)=.*/\1=***/I' "$CONFIG" >&2

log_dirs="$(sed -n 's/^log\.dirs=//p' "$CONFIG" | tail -n1)"
first_dir="${log_dirs%%,*}"
heap="${KAFKA_HEAP_OPTS:--Xmx1G -Xms1G}"
jvm="${KAFKA_JVM_PERFORMANCE_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
log4j="${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=/opt/kafka/config/log4j2.yaml}"
if [[ ! -f "${first_dir}/meta.properties" ]]; then
    format=(format --ignore-formatted -t "${CLUSTER_ID:-5L6g3nShT-eMCtK--X86sw}" -c "$CONFIG")
    # a dynamic quorum (no controller.quorum.voters) is formatted as a standalone controller
    if ! grep -q '^controller\.quorum\.voters=' "$CONFIG" && grep -q '^process\.roles=.*controller' "$CONFIG"; then
        format+=(--standalone)
    fi
    echo "run.sh: formatting ${log_dirs}" >&2
    # shellcheck disable=SC2086
    java -Xmx256m $log4j -cp '/opt/kafka/libs/*' kafka.tools.StorageTool "${format[@]}"
fi
# shellcheck disable=SC2086
exec java $heap $jvm $log4j ${KAFKA_OPTS:-} -cp '/opt/kafka/libs/*' kafka.Kafka "$CONFIG"
