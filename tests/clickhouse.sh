#!/usr/bin/env bash
# clickhouse.sh -- a ClickHouse server of the test's own: Debian's
# clickhouse-server with its config, data and logs in DIR, listening on
# 127.0.0.1 only.
#
#   clickhouse.sh start DIR HTTP_PORT TCP_PORT [REMOTE_SERVERS_XML]   (waits until it answers)
#   clickhouse.sh stop DIR
#
# Users: `default` without a password (from 127.0.0.1 only) and `tally`
# with the password in DIR/password (for the credentials tests).
set -euo pipefail
cmd=${1:?usage: clickhouse.sh start|stop DIR ...}
dir=${2:?}
if [ "$cmd" = stop ]; then
    [ -f "$dir/pid" ] || exit 0
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/pid"
    exit 0
fi
http=${3:?} tcp=${4:?} remote=${5:-}
server=$(command -v clickhouse-server || echo /usr/sbin/clickhouse-server)
[ -x "$server" ] || { echo "clickhouse-server is not installed (scripts/deps.sh installs it)" >&2; exit 1; }
mkdir -p "$dir/data" "$dir/tmp" "$dir/user_files" "$dir/log"
[ -f "$dir/password" ] || head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/password"
hash=$(printf '%s' "$(cat "$dir/password")" | sha256sum | cut -d' ' -f1)
cat >"$dir/config.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>$dir/log/server.log</log><errorlog>$dir/log/error.log</errorlog><size>10M</size><count>1</count></logger>
    <http_port>$http</http_port>
    <tcp_port>$tcp</tcp_port>
    <listen_host>127.0.0.1</listen_host>
    <max_connections>256</max_connections>
    <keep_alive_timeout>10</keep_alive_timeout>
    <max_concurrent_queries>64</max_concurrent_queries>
    <uncompressed_cache_size>67108864</uncompressed_cache_size>
    <mark_cache_size>67108864</mark_cache_size>
    <path>$dir/data/</path>
    <tmp_path>$dir/tmp/</tmp_path>
    <user_files_path>$dir/user_files/</user_files_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    $remote
</yandex>
XML
cat >"$dir/users.xml" <<XML
<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>4000000000</max_memory_usage></default></profiles>
    <users>
        <default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default>
        <tally><password_sha256_hex>$hash</password_sha256_hex><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></tally>
    </users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
XML
"$server" --config-file="$dir/config.xml" >"$dir/log/stdout.log" 2>&1 &
echo $! >"$dir/pid"
for _ in $(seq 1 300); do
    if curl -sf "http://127.0.0.1:$http/ping" >/dev/null 2>&1; then exit 0; fi
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { echo "clickhouse-server exited:" >&2; tail -20 "$dir/log/error.log" "$dir/log/stdout.log" >&2; exit 1; }
    sleep 0.1
done
echo "clickhouse-server did not answer on 127.0.0.1:$http" >&2
exit 1
