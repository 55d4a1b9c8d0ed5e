#!/bin/bash
# kafka-run-class.sh CLASS ARGS...: a Kafka tool on the image's classpath, logging warnings to stderr.
set -e
exec java ${KAFKA_TOOLS_HEAP_OPTS:--Xmx256m} -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile=/opt/kafka/config/tools-log4j2.yaml ${KAFKA_OPTS:-} \
    -cp '/opt/kafka/libs/*' "$@"
