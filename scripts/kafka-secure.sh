#!/usr/bin/env bash
# Local single-node Apache Kafka broker (KRaft: one combined broker+controller
# node) secured with SASL_SSL + SCRAM-SHA-512, to test the secured code paths
# against. Same jars as scripts/kafka.sh (.kafka/lib from Maven Central, or
# KAFKA_HOME). Every listener binds 127.0.0.1 only:
#
#   listener    address          protocol   used by
#   SASL_SSL    127.0.0.1:9095   SASL_SSL   clients (SCRAM-SHA-512, user bucket_app)
#   INTERNAL    127.0.0.1:9096   PLAINTEXT  inter-broker traffic only
#   CONTROLLER  127.0.0.1:9097   PLAINTEXT  KRaft controller
#
# TLS authenticates the broker only (ssl.client.auth=none): clients authenticate
# by SCRAM. No authorizer, so no ACLs: any authenticated user may do anything.
#
# How a client connects:
#   bootstrap servers  127.0.0.1:9095
#   security protocol  SASL_SSL, SASL mechanism SCRAM-SHA-512
#   user / password    bucket_app / the contents of .kafka/secure/password
#   CA to trust        .kafka/secure/ca.pem (broker certificate SANs:
#                      IP:127.0.0.1, DNS:localhost)
#   Java CLI tools     --command-config .kafka/secure/client.properties
#
# Usage: scripts/kafka-secure.sh {fetch|start|stop|restart|status|clean|clean-all}
#   fetch      copy the Kafka jars into .kafka/lib (skipped when already complete)
#   start      start the broker in the background. The first start generates,
#              with openssl, a CA and a broker certificate signed by it, a random
#              keystore password and a random SCRAM password; formatting the data
#              directory creates the SCRAM user. Later starts reuse all of them.
#              Returns once an authenticated SASL_SSL client (aiokafka in
#              .venv) can list topics; without aiokafka, once the port is open.
#              Exit 0 at once when this broker is already running.
#   stop       SIGTERM, then SIGKILL after KAFKA_STOP_TIMEOUT s (default 30)
#   restart    stop + start (data, certificates and passwords are kept)
#   status     exit 0 when a broker listens on 127.0.0.1:9095, 3 otherwise
#   clean      stop and delete the data, logs and generated configs, but KEEP
#              the CA, the broker certificate and both passwords, so the
#              ca.pem and password handed to clients stay valid (the next start
#              formats again and re-creates user bucket_app, same password)
#   clean-all  stop and delete all of .kafka/secure, certificates and passwords
#              too (the next start generates new ones)
#
# Environment:
#   KAFKA_SECURE_HEAP_OPTS     default "-Xmx384m -Xms192m"
#   KAFKA_SECURE_AUTH_TIMEOUT  seconds the authenticated-client check may take
#                              after the broker logged its start, default 60
#   KAFKA_SECURE_PYTHON        python with aiokafka for that check, default
#                              .venv/bin/python
#   KAFKA_HOME, KAFKA_OPTS, KAFKA_START_TIMEOUT, KAFKA_STOP_TIMEOUT, JAVA_HOME
#                              as for scripts/kafka.sh
#
# Files (under .kafka/secure/, git-ignored; the directory is 0700):
#   ca.pem, ca.key             the test CA (ca.pem is what clients trust)
#   broker.pem, broker.key     the broker certificate (chain: broker, CA) and key
#   broker.p12                 PKCS12 keystore the broker loads
#   keystore.password          password of broker.p12 (0600)
#   password                   SCRAM-SHA-512 password of user bucket_app (0600)
#   client.properties          Java client config (0600; holds the password)
#   server.properties, kafka.log4j*.properties  generated on every start
#   kafka.pid, kafka.log (broker log), kafka.out (JVM stdout/stderr), data/
set -euo pipefail

KAFKA_PROG="kafka-secure.sh"
# shellcheck source=scripts/kafka-lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kafka-lib.sh"

PORT=9095            # SASL_SSL, for clients
INTERNAL_PORT=9096   # PLAINTEXT, inter-broker
CPORT=9097           # PLAINTEXT, KRaft controller
SCRAM_MECHANISM="SCRAM-SHA-512"
SCRAM_USER="bucket_app"
HEAP="${KAFKA_SECURE_HEAP_OPTS:--Xmx384m -Xms192m}"
AUTH_TIMEOUT="${KAFKA_SECURE_AUTH_TIMEOUT:-60}"
[[ "${AUTH_TIMEOUT}" =~ ^[0-9]+$ ]] || kafka_die "KAFKA_SECURE_AUTH_TIMEOUT must be a number of seconds, got '${AUTH_TIMEOUT}'"
PYTHON_BIN="${KAFKA_SECURE_PYTHON:-${REPO_ROOT}/.venv/bin/python}"

SECURE_DIR="${KAFKA_STATE_DIR}/secure"
STEM="${SECURE_DIR}/kafka"
PIDFILE="${STEM}.pid"
LOGFILE="${STEM}.log"
OUTFILE="${STEM}.out"
PROPS="${SECURE_DIR}/server.properties"
DATA_DIR="${SECURE_DIR}/data"
METADATA_DIR="${DATA_DIR}/logs"
# sha256 of the SCRAM password the data directory was formatted with.
SCRAM_MARKER="${DATA_DIR}/scram-password.sha256"
CA_PEM="${SECURE_DIR}/ca.pem"
CA_KEY="${SECURE_DIR}/ca.key"
BROKER_PEM="${SECURE_DIR}/broker.pem"
BROKER_KEY="${SECURE_DIR}/broker.key"
KEYSTORE="${SECURE_DIR}/broker.p12"
KEYSTORE_PASSWORD_FILE="${SECURE_DIR}/keystore.password"
PASSWORD_FILE="${SECURE_DIR}/password"
CLIENT_PROPS="${SECURE_DIR}/client.properties"
LABEL="secure broker 127.0.0.1:${PORT} (SASL_SSL)"

rel() { printf '%s\n' "${1#"${REPO_ROOT}"/}"; }

# ------------------------------------------------------ certificates etc. ---

# True when the CA, the broker certificate (signed by that CA, valid for at
# least another day) and the keystore (opened with its password) are all there.
tls_complete() {
  local f
  for f in "${CA_PEM}" "${CA_KEY}" "${BROKER_PEM}" "${BROKER_KEY}" "${KEYSTORE}" "${KEYSTORE_PASSWORD_FILE}"; do
    [[ -s "${f}" ]] || return 1
  done
  openssl x509 -checkend 86400 -noout -in "${BROKER_PEM}" >/dev/null 2>&1 || return 1
  openssl verify -CAfile "${CA_PEM}" "${BROKER_PEM}" >/dev/null 2>&1 || return 1
  openssl pkcs12 -in "${KEYSTORE}" -noout -passin "file:${KEYSTORE_PASSWORD_FILE}" >/dev/null 2>&1
}

# Generates the CA, the broker key and certificate and the PKCS12 keystore in
# a scratch directory, then moves them into place (ca.pem last).
gen_tls() {
  local tmp="${SECURE_DIR}/tls.tmp.$$" glog="${SECURE_DIR}/tls-gen.log"
  rm -rf "${tmp}"
  mkdir -p "${tmp}"
  if ! (
    set -euo pipefail
    umask 077
    cd "${tmp}"
    cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
[v3_broker]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
EOF
    openssl rand -hex 24 >keystore.password
    openssl req -x509 -config openssl.cnf -extensions v3_ca -newkey rsa:2048 -nodes -sha256 \
      -days 3650 -subj "/O=bucket_app/CN=bucket_app local test CA $(date -u +%Y%m%dT%H%M%SZ)" \
      -keyout ca.key -out ca.pem
    openssl req -new -config openssl.cnf -newkey rsa:2048 -nodes -sha256 \
      -subj "/O=bucket_app/CN=localhost" -keyout broker.key -out broker.csr
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
      -days 825 -sha256 -extfile openssl.cnf -extensions v3_broker -out broker.cert.pem
    cat broker.cert.pem ca.pem >broker.pem
    openssl pkcs12 -export -in broker.cert.pem -inkey broker.key -certfile ca.pem -name broker \
      -passout file:keystore.password -out broker.p12
    openssl verify -CAfile ca.pem broker.cert.pem
  ) >"${glog}" 2>&1; then
    rm -rf "${tmp}"
    cat "${glog}" >&2
    kafka_die "generating the CA and broker certificate with openssl failed (log: $(rel "${glog}"))"
  fi
  mv -f "${tmp}/ca.key" "${CA_KEY}"
  mv -f "${tmp}/broker.key" "${BROKER_KEY}"
  mv -f "${tmp}/broker.pem" "${BROKER_PEM}"
  mv -f "${tmp}/broker.p12" "${KEYSTORE}"
  mv -f "${tmp}/keystore.password" "${KEYSTORE_PASSWORD_FILE}"
  mv -f "${tmp}/ca.pem" "${CA_PEM}"
  rm -rf "${tmp}" "${glog}"
  chmod 600 "${CA_KEY}" "${BROKER_KEY}" "${KEYSTORE}" "${KEYSTORE_PASSWORD_FILE}"
  chmod 644 "${CA_PEM}" "${BROKER_PEM}"
  kafka_say "generated a test CA ($(rel "${CA_PEM}")) and a broker certificate for IP:127.0.0.1, DNS:localhost"
}

ensure_tls() {
  tls_complete && return 0
  command -v openssl >/dev/null 2>&1 || kafka_die "openssl not found (needed to generate the test CA and broker certificate)"
  if [[ -e "${CA_PEM}" ]]; then
    kafka_warn "the CA / broker certificate in $(rel "${SECURE_DIR}") are incomplete, expiring or do not match; generating new ones (clients must re-read ca.pem)"
  fi
  gen_tls
}

# The SCRAM password: generated once, kept in .kafka/secure/password (0600).
ensure_password() {
  if [[ ! -s "${PASSWORD_FILE}" ]]; then
    local tmp="${PASSWORD_FILE}.tmp.$$"
    (umask 077 && openssl rand -hex 24 >"${tmp}")
    mv -f "${tmp}" "${PASSWORD_FILE}"
    kafka_say "generated a random SCRAM password for user ${SCRAM_USER} in $(rel "${PASSWORD_FILE}")"
  fi
  chmod 600 "${PASSWORD_FILE}"
  local pw
  pw="$(read_password)"
  # The storage tool's --add-scram syntax has no quoting for ',', '[', ']', '"'.
  [[ "${pw}" =~ ^[A-Za-z0-9._~+/@%:-]+$ ]] ||
    kafka_die "$(rel "${PASSWORD_FILE}") must hold one line of letters, digits or ._~+/@%:- (delete it to generate a new one)"
}

read_password() { head -n1 "${PASSWORD_FILE}" | tr -d '\r\n'; }
password_hash() { read_password | sha256sum | cut -d' ' -f1; }

# A data directory formatted for another password (the password file was
# replaced or deleted) would refuse the current one: start it afresh.
reset_data_if_password_changed() {
  [[ -f "${METADATA_DIR}/meta.properties" ]] || return 0
  local have=""
  [[ -f "${SCRAM_MARKER}" ]] && have="$(head -n1 "${SCRAM_MARKER}")"
  [[ "${have}" == "$(password_hash)" ]] && return 0
  kafka_warn "$(rel "${DATA_DIR}") was formatted for another SCRAM password; deleting it so user ${SCRAM_USER} is created with the current one"
  rm -rf "${DATA_DIR}"
}

# ---------------------------------------------------------------- configs ---

write_props() {
  local kspw pw client_rel
  kspw="$(head -n1 "${KEYSTORE_PASSWORD_FILE}" | tr -d '\r\n')"
  pw="$(read_password)"
  client_rel="$(rel "${CLIENT_PROPS}")"
  (
    umask 077
    cat >"${PROPS}" <<EOF
# Generated by scripts/kafka-secure.sh; rewritten on every start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${CPORT}
listeners=SASL_SSL://127.0.0.1:${PORT},INTERNAL://127.0.0.1:${INTERNAL_PORT},CONTROLLER://127.0.0.1:${CPORT}
advertised.listeners=SASL_SSL://127.0.0.1:${PORT},INTERNAL://127.0.0.1:${INTERNAL_PORT}
inter.broker.listener.name=INTERNAL
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL
sasl.enabled.mechanisms=${SCRAM_MECHANISM}
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location=${KEYSTORE}
ssl.keystore.password=${kspw}
ssl.key.password=${kspw}
ssl.client.auth=none
log.dirs=${METADATA_DIR}
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
EOF
    cat >"${CLIENT_PROPS}" <<EOF
# Generated by scripts/kafka-secure.sh; rewritten on every start.
# e.g. kafka-topics.sh --bootstrap-server 127.0.0.1:${PORT} --command-config ${client_rel} --list
security.protocol=SASL_SSL
sasl.mechanism=${SCRAM_MECHANISM}
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="${SCRAM_USER}" password="${pw}";
ssl.truststore.type=PEM
ssl.truststore.location=${CA_PEM}
EOF
  )
}

# ------------------------------------------------------ readiness (auth) ---

# Exit 0: an authenticated SASL_SSL client listed the topics; 2: no python
# with aiokafka; 3: the broker pid died; 1: not within the time allowed.
AUTH_CHECK_PY='
import asyncio, logging, os, sys, time
try:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.helpers import create_ssl_context
except ImportError:
    sys.exit(2)
bootstrap, cafile, pwfile, user, mechanism, timeout, pid = sys.argv[1:8]

class LastError(logging.Handler):
    # The clients raise "Unable to bootstrap"; the reason is only logged.
    message = ""
    def emit(self, record):
        if record.levelno >= logging.ERROR:
            LastError.message = record.getMessage()
log = logging.getLogger("aiokafka")
log.addHandler(LastError())
log.setLevel(logging.ERROR)
log.propagate = False

async def once():
    with open(pwfile) as f:
        password = f.readline().strip()
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, security_protocol="SASL_SSL",
        sasl_mechanism=mechanism, sasl_plain_username=user, sasl_plain_password=password,
        ssl_context=create_ssl_context(cafile=cafile), request_timeout_ms=5000)
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        try:
            await admin.close()
        except Exception:
            pass

async def main():
    deadline = time.monotonic() + float(timeout)
    refused = 0
    while True:
        LastError.message = ""
        try:
            await asyncio.wait_for(once(), 15)
            return 0
        except Exception as e:
            last = f"{type(e).__module__}.{type(e).__name__}: {e}"
            if LastError.message:
                last += f" ({LastError.message})"
        if not os.path.exists(f"/proc/{pid}"):
            return 3
        # A refused login or certificate will not heal: give up after a few.
        if "SaslAuthenticationFailed" in last or "CERTIFICATE_VERIFY_FAILED" in last:
            refused += 1
        else:
            refused = 0
        if refused >= 5 or time.monotonic() >= deadline:
            print(f"last error: {last}", file=sys.stderr)
            return 1
        await asyncio.sleep(0.5)

sys.exit(asyncio.run(main()))
'

# auth_ready PID: 0 once user bucket_app can list topics over SASL_SSL (or,
# without a python that has aiokafka, once the port is open); 1 otherwise.
auth_ready() {
  local pid="$1" rc=0
  if [[ ! -x "${PYTHON_BIN}" ]]; then
    kafka_warn "no ${PYTHON_BIN#"${REPO_ROOT}"/} (run make setup, or set KAFKA_SECURE_PYTHON): only checked that port ${PORT} is open, not that SCRAM authentication works"
    kafka_port_open "${PORT}"
    return
  fi
  "${PYTHON_BIN}" -c "${AUTH_CHECK_PY}" "127.0.0.1:${PORT}" "${CA_PEM}" "${PASSWORD_FILE}" \
    "${SCRAM_USER}" "${SCRAM_MECHANISM}" "${AUTH_TIMEOUT}" "${pid}" || rc=$?
  case "${rc}" in
    0) return 0 ;;
    2)
      kafka_warn "${PYTHON_BIN#"${REPO_ROOT}"/} has no aiokafka: only checked that port ${PORT} is open, not that SCRAM authentication works"
      kafka_port_open "${PORT}"
      ;;
    3)
      kafka_err "${LABEL} (pid ${pid}) exited while waiting for an authenticated client; see ${LOGFILE}"
      return 1
      ;;
    *)
      kafka_err "an authenticated SASL_SSL client (user ${SCRAM_USER}, CA $(rel "${CA_PEM}")) could not list topics on 127.0.0.1:${PORT} (gave up after ${AUTH_TIMEOUT}s, or at once on a refused login or certificate; last error above)"
      return 1
      ;;
  esac
}

# --------------------------------------------------------------- commands ---

cmd_fetch() {
  kafka_fetch
  kafka_say ".kafka/lib is complete ($(compgen -G "${KAFKA_LIB_DIR}/*.jar" | wc -l) jars)"
}

cmd_start() {
  mkdir -p "${SECURE_DIR}"
  chmod 700 "${SECURE_DIR}"
  kafka_lock "secure"
  local pid
  pid="$(kafka_read_pid "${PIDFILE}")"
  if kafka_pid_alive "${pid}" "${PROPS}"; then
    if kafka_port_open "${PORT}"; then
      kafka_say "${LABEL} is already running (pid ${pid})"
      return 0
    fi
    kafka_say "${LABEL} (pid ${pid}) is starting; waiting for it"
    if ! kafka_wait_ready "${LABEL}" "${pid}" "${PROPS}" "${PORT}" "${LOGFILE}" 0 "${OUTFILE}" ||
      ! auth_ready "${pid}"; then
      exit 1
    fi
    kafka_say "${LABEL} is ready (pid ${pid})"
    return 0
  fi
  rm -f "${PIDFILE}"
  local p
  for p in "${PORT}" "${INTERNAL_PORT}" "${CPORT}"; do
    if kafka_port_open "${p}"; then
      kafka_die "127.0.0.1:${p} is in use by a process this script did not start (the secure broker needs ports ${PORT}, ${INTERNAL_PORT} and ${CPORT})"
    fi
  done

  local t0
  t0="$(date +%s%N)"
  ensure_tls
  ensure_password
  kafka_resolve_java
  kafka_resolve_classpath
  reset_data_if_password_changed
  mkdir -p "${DATA_DIR}"
  write_props
  kafka_write_log4j "${STEM}" "${LOGFILE}"
  if [[ ! -f "${METADATA_DIR}/meta.properties" ]]; then
    rm -f "${SCRAM_MARKER}"
    kafka_format_with_args_if_needed "${PROPS}" "${METADATA_DIR}" "$(kafka_random_uuid)" "${STEM}" \
      --add-scram "${SCRAM_MECHANISM}=[name=${SCRAM_USER},password=$(read_password)]"
    password_hash >"${SCRAM_MARKER}"
    kafka_say "created SCRAM user ${SCRAM_USER} (${SCRAM_MECHANISM})"
  fi

  local offset
  offset="$(kafka_file_size "${LOGFILE}")"
  kafka_launch "${PROPS}" "${STEM}" "${OUTFILE}" "${PIDFILE}" "${HEAP}"
  pid="$(kafka_read_pid "${PIDFILE}")"
  if ! kafka_wait_ready "${LABEL}" "${pid}" "${PROPS}" "${PORT}" "${LOGFILE}" "${offset}" "${OUTFILE}" ||
    ! auth_ready "${pid}"; then
    kafka_stop_pids "${LABEL}" "${PIDFILE}" "${PROPS}" >&2
    kafka_die "${LABEL} failed to start; broker log: ${LOGFILE}"
  fi
  local ms=$((($(date +%s%N) - t0) / 1000000))
  kafka_say "${LABEL} started (pid ${pid}) in $((ms / 1000)).$(printf '%03d' $((ms % 1000)))s; user ${SCRAM_USER}, password in $(rel "${PASSWORD_FILE}"), CA $(rel "${CA_PEM}"); jars: ${KAFKA_CP_SOURCE}; log: $(rel "${LOGFILE}")"
}

cmd_stop() {
  kafka_lock "secure"
  kafka_stop_pids "${LABEL}" "${PIDFILE}" "${PROPS}"
}

cmd_status() {
  kafka_status "${LABEL}" "${PIDFILE}" "${PROPS}" "${PORT}" "user ${SCRAM_USER}; CA $(rel "${CA_PEM}"); log $(rel "${LOGFILE}")"
}

cmd_clean() {
  kafka_lock "secure"
  kafka_stop_pids "${LABEL}" "${PIDFILE}" "${PROPS}"
  rm -rf "${DATA_DIR}"
  rm -f "${PROPS}" "${CLIENT_PROPS}" "${STEM}".log4j.properties "${STEM}".log4j2.properties \
    "${STEM}".tools.log4j.properties "${STEM}".tools.log4j2.properties \
    "${OUTFILE}" "${LOGFILE}" "${LOGFILE}".[0-9]*
  kafka_say "removed $(rel "${DATA_DIR}") and the logs/configs of the secure broker (CA, certificate and passwords kept; .kafka/lib kept)"
}

cmd_clean_all() {
  kafka_lock "secure"
  kafka_stop_pids "${LABEL}" "${PIDFILE}" "${PROPS}"
  rm -rf "${SECURE_DIR}"
  kafka_say "removed $(rel "${SECURE_DIR}") (data, logs, CA, certificates and passwords; .kafka/lib kept)"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart)
    cmd_stop
    kafka_unlock
    cmd_start
    ;;
  status) cmd_status ;;
  clean) cmd_clean ;;
  clean-all) cmd_clean_all ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
