# Sourced by the scripts: installs the Debian packages tally needs when any
# is missing (as root, or through sudo when it is there).
TALLY_PACKAGES="build-essential cmake pkg-config libcmocka-dev libsqlite3-dev sqlite3 clang libclang-rt-14-dev jq bc python3 python3-dev python3-venv python3-setuptools python3-pip python3-wheel python3-pytest python3-torch libmicrohttpd-dev libcurl4-openssl-dev zlib1g-dev prometheus chromium clickhouse-server clickhouse-client curl"
tally_deps() {
    local missing=""
    for p in $TALLY_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    echo "installing Debian packages:$missing" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
}
