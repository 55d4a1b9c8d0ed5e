#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller) for development/tests.
#
#   scripts/kafka-dev.sh start          # resolve jars (first time), format, start, wait; prints bootstrap address last
#   scripts/kafka-dev.sh stop [--clean] # stop the broker started by `start`; --clean also deletes the data dir
#   scripts/kafka-dev.sh status         # exit 0 if running, 1 if not
#   scripts/kafka-dev.sh jars           # resolve jars (first time) and print their directory (no broker)
#
# Needs only Java 17+ and Maven (jars come from Maven Central via `mvn`, once, into a local cache).
# Progress goes to stderr; `start` prints the bootstrap address as the last line of stdout, so
#   BOOTSTRAP=$(scripts/kafka-dev.sh start | tail -n1)
#
# Environment (all optional):
#   RECSYS_KAFKA_VERSION          Kafka version from Maven Central            (default 4.1.1)
#   RECSYS_KAFKA_HOME             jar cache dir          (default ~/.cache/recsys-stream/kafka-<version>)
#   RECSYS_KAFKA_PORT             PLAINTEXT broker port                       (default 9092)
#   RECSYS_KAFKA_CONTROLLER_PORT  KRaft controller port                       (default port+1)
#   RECSYS_KAFKA_DATA             data dir: config, log.dirs, logs, pid file  (default /tmp/recsys-kafka-<port>)
#   RECSYS_KAFKA_HEAP_OPTS        JVM heap flags                              (default "-Xmx512m -Xms256m")
#   RECSYS_KAFKA_JVM_OPTS         extra JVM flags                             (default empty)
#   RECSYS_KAFKA_START_TIMEOUT    seconds to wait for the broker to be ready  (default 90)
#   RECSYS_KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM before KILL   (default 30)
#   RECSYS_KAFKA_PYTHON           python used for the readiness probe; if it can import
#                                 confluent_kafka a metadata request is used, else the TCP
#                                 port + the "Kafka Server started" log line   (default python3)
#   JAVA_HOME                     JDK to use (else `java` on PATH, else Debian's Java 17)
#   MVN                           maven command                               (default mvn)
set -euo pipefail

KAFKA_VERSION="${RECSYS_KAFKA_VERSION:-4.1.1}"
LOG4J_VERSION="2.24.3"               # matches what kafka 4.1.x depends on
DEP_PLUGIN_VERSION="3.8.1"           # maven 3.8's default (2.8) is ancient; pin a modern one
HOST="127.0.0.1"
PORT="${RECSYS_KAFKA_PORT:-9092}"
CONTROLLER_PORT="${RECSYS_KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
KAFKA_HOME="${RECSYS_KAFKA_HOME:-${HOME:-/root}/.cache/recsys-stream/kafka-${KAFKA_VERSION}}"
DATA_DIR="${RECSYS_KAFKA_DATA:-/tmp/recsys-kafka-${PORT}}"
HEAP_OPTS="${RECSYS_KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
EXTRA_JVM_OPTS="${RECSYS_KAFKA_JVM_OPTS:-}"
START_TIMEOUT="${RECSYS_KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${RECSYS_KAFKA_STOP_TIMEOUT:-30}"
PYTHON="${RECSYS_KAFKA_PYTHON:-python3}"
MVN="${MVN:-mvn}"

ADDR="${HOST}:${PORT}"
LIB_DIR="${KAFKA_HOME}/lib"
READY_MARKER="${KAFKA_HOME}/.complete"
LOG4J_CONF="${KAFKA_HOME}/log4j2.properties"
CONFIG="${DATA_DIR}/server.properties"
LOG_DIRS="${DATA_DIR}/kraft-logs"
APP_LOG_DIR="${DATA_DIR}/logs"
PID_FILE="${DATA_DIR}/kafka.pid"

log() { printf 'kafka-dev: %s\n' "$*" >&2; }
die() { printf 'kafka-dev: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    echo "usage: $0 start | stop [--clean] | status | jars" >&2
    exit 2
}

find_java() {
    if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
        JAVA="${JAVA_HOME}/bin/java"
    elif command -v java >/dev/null 2>&1; then
        JAVA="$(command -v java)"
    elif [[ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ]]; then
        JAVA=/usr/lib/jvm/java-17-openjdk-amd64/bin/java
    else
        die "no java found (Kafka ${KAFKA_VERSION} needs Java 17+); set JAVA_HOME"
    fi
    local ver
    ver="$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n1)"
    if [[ -n "$ver" && "$ver" -lt 17 ]]; then
        die "$JAVA is Java $ver; Kafka ${KAFKA_VERSION} brokers need Java 17+ (set JAVA_HOME)"
    fi
}

# ---------------------------------------------------------------- jar cache --

write_log4j_conf() {
    # Everything to a size-capped file in ${kafka.logs.dir}; nothing to the console.
    cat >"${LOG4J_CONF}.tmp" <<'EOF'
# written by scripts/kafka-dev.sh
status = warn
name = recsys-kafka-dev
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 20MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 2
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.zk.name = org.apache.zookeeper
logger.zk.level = WARN
logger.req.name = kafka.request.logger
logger.req.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
EOF
    mv -f "${LOG4J_CONF}.tmp" "${LOG4J_CONF}"
}

ensure_jars() {
    if [[ -f "$READY_MARKER" && -d "$LIB_DIR" ]]; then
        [[ -f "$LOG4J_CONF" ]] || write_log4j_conf
        return 0
    fi
    command -v "$MVN" >/dev/null 2>&1 || die "maven ('$MVN') not found; needed once to fetch Kafka ${KAFKA_VERSION} jars"
    mkdir -p "$KAFKA_HOME"
    log "resolving Kafka ${KAFKA_VERSION} jars from Maven Central into ${LIB_DIR} (first run only)..."
    local pom="${KAFKA_HOME}/pom.xml" tmp_lib="${KAFKA_HOME}/lib.tmp.$$"
    cat >"$pom" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- written by scripts/kafka-dev.sh: runtime classpath of a Kafka ${KAFKA_VERSION} KRaft broker -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.recsys-stream</groupId>
  <artifactId>kafka-dev-classpath</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <!-- kafka.Kafka, kafka.tools.StorageTool and (transitively) kafka-server, -storage, -raft, -metadata, -clients... -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>${KAFKA_VERSION}</version></dependency>
    <!-- the binary distribution ships these; the pom does not pull them in -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>${LOG4J_VERSION}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>${LOG4J_VERSION}</version></dependency>
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin><groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId><version>${DEP_PLUGIN_VERSION}</version></plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
EOF
    rm -rf "$tmp_lib"
    # mvn's output goes to stderr so that our stdout stays clean; Debian's maven 3.8 prints stray
    # ANSI resets even with -B -q, so strip those (pipefail keeps mvn's exit status)
    if ! (cd "$KAFKA_HOME" && "$MVN" -B -q -f "$pom" \
            "org.apache.maven.plugins:maven-dependency-plugin:${DEP_PLUGIN_VERSION}:copy-dependencies" \
            -DincludeScope=runtime -DoutputDirectory="$tmp_lib" </dev/null 2>&1 |
            sed -e 's/\x1b\[[0-9;]*m//g' -e '/^[[:space:]]*$/d' >&2); then
        rm -rf "$tmp_lib"
        die "mvn could not resolve org.apache.kafka:kafka_2.13:${KAFKA_VERSION} (see above; try another RECSYS_KAFKA_VERSION)"
    fi
    ls "$tmp_lib"/kafka_2.13-*.jar >/dev/null 2>&1 || { rm -rf "$tmp_lib"; die "kafka_2.13 jar missing after mvn run"; }
    rm -rf "$LIB_DIR"
    mv "$tmp_lib" "$LIB_DIR"
    write_log4j_conf
    date -u +%FT%TZ >"$READY_MARKER"
    log "cached $(ls "$LIB_DIR" | wc -l) jars in ${LIB_DIR}"
}

# ------------------------------------------------------------------ process --

# pid of the broker this script started for $DATA_DIR, if it is alive; else fails
running_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid
    pid="$(tr -dc '0-9' <"$PID_FILE")"
    [[ -n "$pid" ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # guard against pid reuse: must be our kafka.Kafka with our config
    local cmdline
    cmdline="$(tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == *kafka.Kafka*"$CONFIG"* ]] || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null; }

write_config() {
    cat >"${CONFIG}.tmp" <<EOF
# written by scripts/kafka-dev.sh -- single-node KRaft broker+controller for development
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@${HOST}:${CONTROLLER_PORT}
listeners=PLAINTEXT://${HOST}:${PORT},CONTROLLER://${HOST}:${CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://${HOST}:${PORT}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${LOG_DIRS}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
log.retention.hours=24
log.segment.bytes=67108864
log.retention.check.interval.ms=300000
delete.topic.enable=true
EOF
    mv -f "${CONFIG}.tmp" "$CONFIG"
}

jvm_base_opts() {
    # shellcheck disable=SC2206
    HEAP=($HEAP_OPTS)
    # shellcheck disable=SC2206
    JVM_OPTS=(-XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
        -Djava.awt.headless=true
        "-Dlog4j2.configurationFile=${LOG4J_CONF}"
        "-Dkafka.logs.dir=${APP_LOG_DIR}"
        $EXTRA_JVM_OPTS)
}

new_cluster_id() {
    # Kafka Uuid: 16 random bytes, url-safe base64 without padding (what `kafka-storage random-uuid` prints);
    # avoid a leading '-' (Kafka does too) so it never looks like a CLI flag.
    local id
    while :; do
        id="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* && ${#id} -eq 22 ]] && break
    done
    echo "$id"
}

format_storage() {
    if [[ -f "${LOG_DIRS}/meta.properties" ]]; then
        log "storage already formatted (${LOG_DIRS})"
        return 0
    fi
    local cid
    cid="$(new_cluster_id)"
    log "formatting KRaft storage in ${LOG_DIRS} (cluster id ${cid})"
    # Static quorum (controller.quorum.voters) => plain `format -t ID -c CONFIG`.
    # (--standalone is only for a dynamic quorum, i.e. controller.quorum.bootstrap.servers.)
    if ! "$JAVA" -Xmx256m "${JVM_OPTS[@]}" -cp "${LIB_DIR}/*" kafka.tools.StorageTool \
            format --ignore-formatted -t "$cid" -c "$CONFIG" >"${APP_LOG_DIR}/format.out" 2>&1; then
        cat "${APP_LOG_DIR}/format.out" >&2
        die "formatting storage failed"
    fi
}

show_log_tail() {
    local f
    for f in "${APP_LOG_DIR}/kafka.out" "${APP_LOG_DIR}/server.log"; do
        if [[ -s "$f" ]]; then
            echo "----- last 40 lines of $f -----" >&2
            tail -n 40 "$f" >&2
        fi
    done
}

have_py_client() {
    command -v "$PYTHON" >/dev/null 2>&1 && "$PYTHON" -c 'import confluent_kafka' >/dev/null 2>&1
}

# One readiness probe: 0 when the broker answers a metadata request (or, without a python client,
# when the port is open and the broker logged that it finished starting).
probe_ready() {
    if [[ "$PROBE" == python ]]; then
        "$PYTHON" - "$ADDR" >/dev/null 2>&1 <<'EOF'
import sys
from confluent_kafka.admin import AdminClient
md = AdminClient({"bootstrap.servers": sys.argv[1], "log_level": 0,
                  "socket.connection.setup.timeout.ms": 2000}).list_topics(timeout=3)
sys.exit(0 if md.brokers else 1)
EOF
    else
        port_open "$PORT" && grep -q 'Kafka Server started' "${APP_LOG_DIR}/server.log" 2>/dev/null
    fi
}

wait_ready() {
    local pid="$1" start=$SECONDS
    if have_py_client; then PROBE=python; else PROBE=tcp; fi
    log "waiting up to ${START_TIMEOUT}s for ${ADDR} (probe: ${PROBE})"
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail
            rm -f "$PID_FILE"
            die "broker process ${pid} exited during startup (logs in ${APP_LOG_DIR})"
        fi
        if probe_ready; then
            log "broker ready after $((SECONDS - start))s (pid ${pid})"
            return 0
        fi
        if ((SECONDS - start >= START_TIMEOUT)); then
            show_log_tail
            die "broker not ready after ${START_TIMEOUT}s (pid ${pid} still running; logs in ${APP_LOG_DIR}; stop it with: $0 stop)"
        fi
        sleep 0.5
    done
}

# ----------------------------------------------------------------- commands --

cmd_start() {
    mkdir -p "$DATA_DIR"
    exec 9>"${DATA_DIR}/.lock"
    command -v flock >/dev/null 2>&1 && flock 9

    local pid
    if pid="$(running_pid)"; then
        log "already running (pid ${pid})"
        echo "$ADDR"
        return 0
    fi
    rm -f "$PID_FILE"

    port_open "$PORT" && die "port ${PORT} is already in use by another process (set RECSYS_KAFKA_PORT)"
    port_open "$CONTROLLER_PORT" && die "controller port ${CONTROLLER_PORT} is already in use (set RECSYS_KAFKA_CONTROLLER_PORT)"

    find_java
    ensure_jars
    mkdir -p "$APP_LOG_DIR" "$LOG_DIRS"
    write_config
    jvm_base_opts
    format_storage

    # keep one previous broker log; the tcp probe and the failure tail must only see this run's log
    [[ -f "${APP_LOG_DIR}/server.log" ]] && mv -f "${APP_LOG_DIR}/server.log" "${APP_LOG_DIR}/server.log.prev"
    log "starting Kafka ${KAFKA_VERSION} (KRaft) on ${ADDR}, data in ${DATA_DIR}"
    # Detached from our session and from our stdout/stderr, so callers doing $(kafka-dev.sh start) don't hang.
    # The child writes its own pid (bash's $$ survives exec) so the pid file is right even if setsid forks.
    local setsid=()
    command -v setsid >/dev/null 2>&1 && setsid=(setsid)
    "${setsid[@]}" bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
        "$JAVA" "${HEAP[@]}" "${JVM_OPTS[@]}" -cp "${LIB_DIR}/*" kafka.Kafka "$CONFIG" \
        </dev/null >"${APP_LOG_DIR}/kafka.out" 2>&1 9>&- &
    local i
    for i in $(seq 1 50); do [[ -s "$PID_FILE" ]] && break; sleep 0.1; done
    pid="$(tr -dc '0-9' <"$PID_FILE" 2>/dev/null || true)"
    [[ -n "$pid" ]] || die "broker did not start (no pid file)"

    wait_ready "$pid"
    echo "$ADDR"
}

cmd_stop() {
    local clean=0
    case "${1:-}" in
        "") ;;
        --clean) clean=1 ;;
        *) usage ;;
    esac
    if [[ -d "$DATA_DIR" ]]; then
        exec 9>"${DATA_DIR}/.lock"
        command -v flock >/dev/null 2>&1 && flock 9
    fi
    local pid
    if pid="$(running_pid)"; then
        log "stopping broker (pid ${pid})"
        kill -TERM "$pid" 2>/dev/null || true
        local start=$SECONDS
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS - start >= STOP_TIMEOUT)); then
                log "still alive after ${STOP_TIMEOUT}s; sending KILL"
                kill -KILL "$pid" 2>/dev/null || true
                sleep 0.5
                break
            fi
            sleep 0.5
        done
        log "stopped"
    else
        log "not running"
    fi
    rm -f "$PID_FILE"
    if ((clean)); then
        case "$DATA_DIR" in
            "" | / | /tmp | /root | "${HOME:-/root}") die "refusing to delete data dir '${DATA_DIR}'" ;;
        esac
        if [[ -d "$DATA_DIR" ]]; then
            rm -rf -- "$DATA_DIR"
            log "removed ${DATA_DIR}"
        fi
    fi
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running pid=${pid} bootstrap=${ADDR} data=${DATA_DIR}"
        return 0
    fi
    echo "not running (bootstrap would be ${ADDR}, data=${DATA_DIR})"
    return 1
}

case "${1:-}" in
    start) [[ $# -eq 1 ]] || usage; cmd_start ;;
    stop) shift; [[ $# -le 1 ]] || usage; cmd_stop "$@" ;;
    status) [[ $# -eq 1 ]] || usage; cmd_status ;;
    jars) [[ $# -eq 1 ]] || usage; ensure_jars; echo "$LIB_DIR" ;;
    *) usage ;;
esac
