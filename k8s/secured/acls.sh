#!/bin/sh
# The least-privilege ACLs of the controller on a secured broker (README, "Secured
# Kafka"), applied with Kafka's standard CLI as an administrator:
#
#   BOOTSTRAP=kafka:9093 COMMAND_CONFIG=admin.properties sh k8s/secured/acls.sh
#
# admin.properties: the admin's client settings (security.protocol=SASL_SSL,
# sasl.mechanism=SCRAM-SHA-512, sasl.jaas.config=..., ssl.truststore.*).
# Topic names and the transactional id default to the base ConfigMap's; set them
# as the controller's settings are set. KAFKA_ACLS=echo prints the commands instead.
#
# The controller's ACLs are exactly those its integration test runs with
# (tests/integration/test_secured.py): each one was removed in turn and the
# controller then refused to start, naming it. The last block is what the other
# services need, a recommendation this project does not test against them.
set -eu

: "${BOOTSTRAP:?set BOOTSTRAP to the secured listener, e.g. kafka:9093}"
: "${COMMAND_CONFIG:?set COMMAND_CONFIG to the admin client properties file}"
KAFKA_ACLS="${KAFKA_ACLS:-kafka-acls.sh}"
CONTROLLER_USER="${CONTROLLER_USER:-controller}"
INSTRUCTION_TOPIC="${INSTRUCTION_TOPIC:-instructions}"
REPORT_TOPIC="${REPORT_TOPIC:-factory_reports}"
COMMAND_TOPIC="${COMMAND_TOPIC:-factory_commands}"
SYNC_TOPIC="${SYNC_TOPIC:-enginesync}"
DEAD_LETTER_TOPIC="${DEAD_LETTER_TOPIC:-controller_dead_letters}"
TRANSACTIONAL_ID="${KAFKA_TRANSACTIONAL_ID:-rtcef-controller.${COMMAND_TOPIC}.${SYNC_TOPIC}}"
FACTORY_USER="${FACTORY_USER:-factory}"
FACTORY_GROUP="${FACTORY_GROUP:-factory}"
ENGINE_USER="${ENGINE_USER:-engine}"
ENGINE_GROUP="${ENGINE_GROUP:-engine}"
OBSERVER_USER="${OBSERVER_USER:-observer}"

acl() {
    "$KAFKA_ACLS" --bootstrap-server "$BOOTSTRAP" --command-config "$COMMAND_CONFIG" --add "$@"
}

# The controller: reads its two inputs; writes commands, syncs, dead letters and the
# deadline markers on the report topic; reads its outputs back at start (the outbox);
# one transactional id; Describe on its readers' groups (none commits an offset).
acl --allow-principal "User:${CONTROLLER_USER}" --operation Read --topic "${INSTRUCTION_TOPIC}"
acl --allow-principal "User:${CONTROLLER_USER}" --operation Read --topic "${REPORT_TOPIC}"
acl --allow-principal "User:${CONTROLLER_USER}" --operation Write --topic "${REPORT_TOPIC}"
acl --allow-principal "User:${CONTROLLER_USER}" --operation Read --topic "${COMMAND_TOPIC}"
acl --allow-principal "User:${CONTROLLER_USER}" --operation Write --topic "${COMMAND_TOPIC}"
acl --allow-principal "User:${CONTROLLER_USER}" --operation Read --topic "${SYNC_TOPIC}"
acl --allow-principal "User:${CONTROLLER_USER}" --operation Write --topic "${SYNC_TOPIC}"
acl --allow-principal "User:${CONTROLLER_USER}" --operation Write --topic "${DEAD_LETTER_TOPIC}"
acl --allow-principal "User:${CONTROLLER_USER}" --operation Write --transactional-id "${TRANSACTIONAL_ID}"
acl --allow-principal "User:${CONTROLLER_USER}" --operation Describe --group "${TRANSACTIONAL_ID}." --resource-pattern-type prefixed

# The other services (recommended, not tested here): only the factory writes reports,
# only the Observer writes instructions; the engine reads syncs.
acl --allow-principal "User:${FACTORY_USER}" --operation Read --topic "${COMMAND_TOPIC}"
acl --allow-principal "User:${FACTORY_USER}" --operation Read --group "${FACTORY_GROUP}"
acl --allow-principal "User:${FACTORY_USER}" --operation Write --topic "${REPORT_TOPIC}"
acl --allow-principal "User:${ENGINE_USER}" --operation Read --topic "${SYNC_TOPIC}"
acl --allow-principal "User:${ENGINE_USER}" --operation Read --group "${ENGINE_GROUP}"
acl --allow-principal "User:${OBSERVER_USER}" --operation Write --topic "${INSTRUCTION_TOPIC}"
